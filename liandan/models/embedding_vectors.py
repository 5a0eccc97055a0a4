"""The trainable vectors of an embedding (textual inversion trains them; APT trains a pair), and creating
them as A1111's `create_embedding` does.

Creation: the init text is tokenized without BOS/EOS, cut to as many tokens as the embedding has vectors, and
vector i copies the token embedding at `i * tokens // vectors` (zeros without init text). SDXL gets a
clip_l + clip_g pair, each from its own encoder's embedding table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from liandan.formats.embedding import (
    SDXL_KEYS,
    SINGLE_KEY,
    Embedding,
    check_family,
    init_vectors,
    load_embedding,
)

if TYPE_CHECKING:
    from liandan.models.bundle import ModelBundle


class TrainableEmbedding(torch.nn.Module):
    """The trainable vectors, one float32 parameter per text encoder, keyed like the embedding file
    (`as_prompt_embedding` gives them in the form `models.conditioning` splices into prompts)."""

    def __init__(self, vectors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.keys = list(vectors)
        self.params = torch.nn.ParameterList(torch.nn.Parameter(v.clone().float()) for v in vectors.values())

    def as_prompt_embedding(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """What PromptEncoder/generate take: one tensor for SD1/SD2, {clip_l, clip_g} for SDXL."""
        if len(self.keys) == 1:
            return self.params[0]
        return dict(zip(self.keys, self.params))

    def detached(self) -> dict[str, torch.Tensor]:
        """A CPU float32 copy, for saving."""
        return {key: p.detach().to("cpu", torch.float32).clone() for key, p in zip(self.keys, self.params)}

    def state(self) -> dict[str, torch.Tensor]:
        """A copy on the training device (checkpoints, resume, the NaN rollback)."""
        return {key: p.detach().clone() for key, p in zip(self.keys, self.params)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for key, p in zip(self.keys, self.params):
                p.copy_(state[key])


def encoder_keys(bundle: ModelBundle) -> tuple[str, ...]:
    """The embedding's vector keys, one per text encoder of the bundle."""
    return SDXL_KEYS if bundle.is_sdxl else (SINGLE_KEY,)


def init_token_embeddings(
    bundle: ModelBundle, encoder_index: int, init_text: str, count: int
) -> torch.Tensor:
    """Token-embedding rows of `init_text` (at most `count` tokens, no BOS/EOS) from one text encoder."""
    tokenizer = bundle.tokenizers[encoder_index]
    ids = tokenizer(init_text, add_special_tokens=False, truncation=False)["input_ids"][:count]
    table = bundle.text_encoders[encoder_index].get_input_embeddings().weight
    return table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().float().cpu()


def new_embedding(bundle: ModelBundle, name: str, init_text: str, num_vectors: int) -> Embedding:
    """A fresh embedding for `bundle`, initialised from `init_text` as A1111 does (step 0). `name` must
    already follow the naming rule (`liandan.jobs.check_name`); `init_vectors` checks the count."""
    vectors = {}
    for index, (key, width) in enumerate(zip(encoder_keys(bundle), bundle.embedding_widths)):
        rows = init_token_embeddings(bundle, index, init_text, num_vectors) if init_text else None
        vectors[key] = init_vectors(rows, num_vectors, width)
    return Embedding(name=name, vectors=vectors, step=0)


def load_for_model(path: Path, bundle: ModelBundle) -> Embedding:
    """An existing embedding, refused with a FormatError when it was made for another model family."""
    embedding = load_embedding(path)
    check_family(embedding, bundle.embedding_widths)
    return embedding
