"""Widgets every method tab shares: the job status box with its progress bar, Interrupt and Resume, the loss
curve and the preview gallery, all fed by one poll of the JobRunner (see `start_polling`).

Written against Gradio 3.41 (A1111's), using only what 4.x still has. Gradio is imported here at module top:
only the UI imports this module.
"""

from __future__ import annotations

import html
import importlib.resources
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from liandan.job_runner import JobRunner, JobStatus

if TYPE_CHECKING:
    from liandan.host.base import Host

POLL_SECONDS = 1.0
MAX_PLOT_POINTS = 400  # the curve is resent on every poll: keep it small however long the run
MAX_GALLERY = 12
PLOT_WIDTH, PLOT_HEIGHT = 420, 200


@dataclass
class JobPanel:
    """The status widgets of one tab, showing the newest job of `kind`."""

    kind: str
    status: Any
    loss_plot: Any | None  # None: a job that does not train (preprocess) has no loss and no previews
    gallery: Any | None

    @property
    def outputs(self) -> list[Any]:
        return [c for c in (self.status, self.loss_plot, self.gallery) if c is not None]


@dataclass
class UIContext:
    """What a tab gets: the host and runner as plain objects, and the callbacks tabs share. No globals."""

    host: Host
    runner: JobRunner
    in_webui: bool = False
    panels: list[JobPanel] = field(default_factory=list)
    # called after a job writes a checkpoint, so the host's model dropdown can offer it (A1111: top-left)
    on_checkpoints_changed: Callable[[], None] = lambda: None

    def checkpoint_choices(self) -> list[str]:
        return [ref.title for ref in self.host.list_checkpoints()]

    def template_choices(self) -> list[str]:
        """Prompt template files: the user's folder first, then the ones liandan ships."""
        user = sorted(p.name for p in self.host.folders.templates.glob("*.txt"))
        shipped_dir = importlib.resources.files("liandan.data") / "templates"
        shipped = (
            sorted(p.name for p in shipped_dir.iterdir() if p.name.endswith(".txt"))
            if shipped_dir.is_dir()
            else []
        )
        return user + [name for name in shipped if name not in user]


CURRENT_MODEL = "(current model)"


def model_dropdown(ctx: UIContext, prefix: str) -> Any:
    """The model a job trains on. Inside A1111 that is the checkpoint of its top-left dropdown; standalone,
    the current one or any checkpoint of the data dir."""
    return gr.Dropdown(
        model_dropdown_choices(ctx), value=CURRENT_MODEL, label="Model", elem_id=f"{prefix}_model"
    )


def model_dropdown_choices(ctx: UIContext) -> list[str]:
    return [CURRENT_MODEL] if ctx.in_webui else [CURRENT_MODEL, *ctx.checkpoint_choices()]


def job_model(title: str | None) -> str:
    """A job spec's `model` from the dropdown: "" means the host's current model."""
    return "" if not title or title == CURRENT_MODEL else title


def render_status(status: JobStatus | None, checkpoints_dir: Path | None = None) -> str:
    """HTML for the status box: a progress bar and one line of text (plus the error, if any). When the job
    saved into `checkpoints_dir`, a marker tells javascript/liandan.js to refresh A1111's model dropdown."""
    if status is None:
        return '<div class="liandan-status"><p class="liandan-status-text">No job yet.</p></div>'
    percent = 100.0 * status.step / status.total if status.total else 0.0
    if status.state == "done":
        percent = 100.0
    parts = [status.state, f"step {status.step}/{status.total or '?'}"]
    if status.loss is not None:
        parts.append(f"loss {status.loss:.5f}")
    text = " · ".join(parts)
    rows = [
        '<div class="liandan-progress">'
        f'<div class="liandan-progress-bar" style="width:{percent:.1f}%"></div></div>',
        f'<p class="liandan-status-text liandan-state-{status.state}">{html.escape(text)}</p>',
    ]
    if status.error:
        rows.append(f'<p class="liandan-error">{html.escape(status.error)}</p>')
    elif status.messages:
        rows.append(f'<p class="liandan-message">{html.escape(status.messages[-1])}</p>')
    if status.outputs:
        names = ", ".join(html.escape(str(p)) for p in status.outputs[-3:])
        rows.append(f'<p class="liandan-outputs">Saved: {names}</p>')
        if checkpoints_dir is not None and any(checkpoints_dir in p.parents for p in status.outputs):
            key = html.escape(f"{status.id}-{len(status.outputs)}")
            rows.append(f'<span class="liandan-refresh-checkpoints" data-key="{key}" hidden></span>')
    return f'<div class="liandan-status">{"".join(rows)}</div>'


def loss_points(status: JobStatus | None) -> list[tuple[int, float]]:
    """The loss history thinned to about MAX_PLOT_POINTS, the first and last points always kept."""
    if status is None or not status.losses:
        return []
    losses = status.losses
    stride = max(1, -(-len(losses) // MAX_PLOT_POINTS))  # ceiling: at most MAX_PLOT_POINTS kept
    kept = list(losses[::stride])
    if kept[-1] != losses[-1]:
        kept.append(losses[-1])
    return kept


def render_loss_curve(status: JobStatus | None) -> str:
    """The loss curve as inline SVG: a few hundred points need no plotting library (gr.LinePlot re-embeds
    Vega on every update and floods the browser console with version warnings)."""
    points = loss_points(status)
    if not points:
        return '<div class="liandan-loss"><p class="liandan-loss-empty">Loss: no steps yet.</p></div>'
    steps = [step for step, _ in points]
    finite = [(step, loss) for step, loss in points if math.isfinite(loss)]  # a NaN step leaves a gap
    low, high = (min(v for _, v in finite), max(v for _, v in finite)) if finite else (0.0, 1.0)
    span_x, span_y = max(steps[-1] - steps[0], 1), (high - low) or 1.0
    pad = 4

    def xy(step: int, loss: float) -> str:
        x = pad + (step - steps[0]) / span_x * (PLOT_WIDTH - 2 * pad)
        y = pad + (high - loss) / span_y * (PLOT_HEIGHT - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(step, loss) for step, loss in finite)
    caption = (
        f"loss {points[-1][1]:.5f} at step {steps[-1]} · range {low:.5f} to {high:.5f} "
        f"over steps {steps[0]} to {steps[-1]}"
    )
    return (
        '<div class="liandan-loss">'
        f'<svg viewBox="0 0 {PLOT_WIDTH} {PLOT_HEIGHT}" width="100%" role="img" '
        f'aria-label="{html.escape(caption)}"><title>{html.escape(caption)}</title>'
        f'<polyline class="liandan-loss-line" fill="none" points="{line}"/></svg>'
        f'<p class="liandan-loss-caption">{html.escape(caption)}</p></div>'
    )


def preview_paths(status: JobStatus | None) -> list[str]:
    if status is None:
        return []
    return [str(p) for p in status.previews[-MAX_GALLERY:] if Path(p).is_file()]


def job_panel(ctx: UIContext, kind: str, prefix: str, training: bool = True) -> JobPanel:
    """Status and Interrupt for jobs of `kind`, and for a training job (`training`) Resume, the loss curve
    and the previews; elem_ids start with `prefix`."""
    loss_plot = gallery = resume = None
    with gr.Column(elem_id=f"{prefix}_job_panel", elem_classes=["liandan-job-panel"]):
        status = gr.HTML(render_status(ctx.runner.status(kind=kind)), elem_id=f"{prefix}_status")
        with gr.Row():
            interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt")
            if training:
                resume = gr.Button("Resume", elem_id=f"{prefix}_resume")
        # what the last button press did: the status box above is rewritten by every poll
        notice = gr.HTML("", elem_id=f"{prefix}_notice")
        if training:
            loss_plot = gr.HTML(render_loss_curve(None), elem_id=f"{prefix}_loss")
            # "contain": the self-test's side-by-side sheets are wide; a square crop cut their labels
            gallery = gr.Gallery(
                label="Previews", elem_id=f"{prefix}_previews", columns=4, height="auto", object_fit="contain"
            )

    def on_interrupt() -> tuple[str, str]:
        job_id = _running_id(ctx.runner, kind)
        if job_id is None:
            text = "No job is running: nothing to interrupt."
        else:
            ctx.runner.interrupt(job_id)
            text = f"Interrupting {job_id}: it finishes the current step and saves, then stops."
        return render_status(ctx.runner.status(kind=kind)), _notice(text)

    def on_resume() -> tuple[str, str]:
        job_id = ctx.runner.resume(kind)
        return render_status(ctx.runner.status(kind=kind)), _notice(_resume_text(ctx.runner, kind, job_id))

    interrupt.click(on_interrupt, None, [status, notice], queue=False)
    if resume is not None:
        resume.click(on_resume, None, [status, notice], queue=False)
    panel = JobPanel(kind, status, loss_plot, gallery)
    ctx.panels.append(panel)
    return panel


def _notice(text: str) -> str:
    return f'<p class="liandan-message">{html.escape(text)}</p>'


def _resume_text(runner: JobRunner, kind: str, resumed_id: str | None) -> str:
    """Why Resume did or did not start a job: it only continues one that was interrupted or failed."""
    if resumed_id is not None:
        return f"Resumed as {resumed_id}, from the last saved state."
    last = runner.status(kind=kind)
    if last is None:
        return "Nothing to resume: no job has run yet."
    if not last.is_finished:
        return f"Nothing to resume: {last.id} is still {last.state}; press Resume once it has stopped."
    return f"Nothing to resume: {last.id} is {last.state}; Resume continues an interrupted or failed job."


def _running_id(runner: JobRunner, kind: str) -> str | None:
    status = runner.status(kind=kind)
    return status.id if status is not None and not status.is_finished else None


def poll_values(ctx: UIContext) -> list[Any]:
    """One value per output of every panel, in `ctx.panels` order."""
    values: list[Any] = []
    for panel in ctx.panels:
        status = ctx.runner.status(kind=panel.kind)
        values.append(render_status(status, ctx.host.folders.checkpoints))
        if panel.loss_plot is not None:
            values += [render_loss_curve(status), preview_paths(status)]
    return values


# The page's side of the poll. A browser timer clicks the hidden poll button once a second while a job panel
# is on screen and the previous poll has come back (or has been on its way for over 10 s): not Gradio's
# `every=`, whose repeating event keeps the server from closing, so A1111's "Reload UI" and "Apply and
# restart UI" hung for good. The timer stops itself when the button is gone.
_POLL_BUTTON = "liandan_poll"
_FIND_BUTTON = f"(typeof gradioApp === 'function' ? gradioApp() : document).querySelector('#{_POLL_BUTTON}')"
POLL_JS = f"""
() => {{
    if (window.liandanPoll) clearInterval(window.liandanPoll);
    window.liandanPoll = setInterval(() => {{
        const button = {_FIND_BUTTON};
        if (!button) {{ clearInterval(window.liandanPoll); return; }}
        const panels = button.getRootNode().querySelectorAll(".liandan-job-panel");
        const shown = [...panels].some((panel) => panel.offsetParent !== null);
        const busy = Date.now() - Number(button.dataset.busySince || 0) < 10000;
        if (shown && !busy) {{
            button.dataset.busySince = String(Date.now());
            button.click();
        }}
    }}, {int(POLL_SECONDS * 1000)});
    return [];
}}
"""
POLL_DONE_JS = (
    f"() => {{ const button = {_FIND_BUTTON}; if (button) delete button.dataset.busySince; return []; }}"
)
_JS_ARG = "_js" if int(gr.__version__.split(".")[0]) < 4 else "js"  # renamed in Gradio 4


def start_polling(ctx: UIContext, blocks: Any) -> None:
    """One poll for all panels of `blocks` (call it last, inside the Blocks): a hidden button that the page's
    timer (POLL_JS) clicks. Each click is one short request outside the queue, so nothing outlives a page
    and no queue slot is held."""
    outputs = [component for panel in ctx.panels for component in panel.outputs]
    if not outputs:
        return
    poll = gr.Button("poll", elem_id=_POLL_BUTTON, elem_classes=["liandan-hidden"])
    event = poll.click(lambda: poll_values(ctx), None, outputs, queue=False, show_progress="hidden")
    event.then(None, None, None, queue=False, **{_JS_ARG: POLL_DONE_JS})
    blocks.load(None, None, None, queue=False, **{_JS_ARG: POLL_JS})
