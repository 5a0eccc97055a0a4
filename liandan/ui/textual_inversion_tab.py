"""The Textual Inversion tab: Create embedding, Train, and the shared job panel (progress, loss, previews,
Interrupt, Resume), laid out by `ui/sections.py` from TextualInversionJob's fields."""

from __future__ import annotations

from typing import Any

from liandan.formats.embedding_files import EMBEDDING_SUFFIXES
from liandan.jobs import TextualInversionJob
from liandan.ui.components import UIContext
from liandan.ui.sections import TrainingTab, build_training_tab
from liandan.ui.spec_form import SpecForm

PREFIX = "liandan_ti"


def job_from_form(values: dict[str, Any]) -> TextualInversionJob:
    """Widget values by field path → a validated job: numbers to the field's type, "" → None for options."""
    return SpecForm(TextualInversionJob, PREFIX).to_spec(values)


def embedding_names(ctx: UIContext) -> list[str]:
    """The embeddings A1111 would list from the embeddings folder (top level), by name."""
    folder = ctx.host.folders.embeddings
    return sorted({p.stem for p in folder.glob("*") if p.suffix in EMBEDDING_SUFFIXES and p.is_file()})


def _create_controls(f: SpecForm[Any]) -> None:
    f.text("name", "Name")
    f.text("init_text", "Initialization text")
    f.slider("vectors", "Number of vectors per token (a new embedding's)", 1, 75, 1)
    f.check("overwrite", "Overwrite old embedding")
    f.radio("file_format", "Save as (Create and Train)")


def _create(host: Any, job: TextualInversionJob) -> Any:
    from liandan.methods.textual_inversion import create_embedding

    return create_embedding(host, job)


def _train_controls(f: SpecForm[Any]) -> None:
    f.check("save_png_cards", "Save embedding PNG cards")


TAB = TrainingTab(
    prefix=PREFIX,
    spec=TextualInversionJob,
    noun="embedding",
    create_controls=_create_controls,
    create=_create,
    names=embedding_names,
    own_train_controls=_train_controls,
    labels={"train.learn_rate": "Embedding learning rate (0.005 or 0.1:500, 0.01)"},
)


def build(ctx: UIContext) -> None:
    build_training_tab(ctx, TAB)
