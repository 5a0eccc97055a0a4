"""The one list of job kinds: for each, its spec class, runner, tab and the artifact it writes.

The CLI, the REST routes, the standalone app and the WebUI tabs all read this list, so a kind is known the
same way whichever of them started (a WebUI with `--nowebui` builds no tab and still runs every kind).
Spec classes are imported here (they are light); runners and tabs are named by module and imported when
first used, so `python -m liandan --help` does not import torch or gradio.

A runner or tab whose module needs an optional package that is not installed is unavailable, with that
package's name in the message; any other ImportError (a renamed symbol in our own code) propagates.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from liandan.errors import ConfigError
from liandan.jobs import (
    AestheticJob,
    AptJob,
    DreamBoothJob,
    HypernetworkJob,
    JobSpec,
    LoraJob,
    TextualInversionJob,
)
from liandan.preprocess.job import PreprocessJob

if TYPE_CHECKING:
    from liandan.host.base import ArtifactKind, Host
    from liandan.progress import Control, Reporter

JobFn = Callable[[JobSpec, "Host", "Reporter", "Control"], Any]


class MethodUnavailable(ConfigError):
    """A kind whose runner or tab needs an optional package that is not installed."""


@dataclass(frozen=True)
class Method:
    """One job kind. `runner` is "module:function" (imported on first use) or the function itself; `tab` is
    the module of its UI tab (`build(ctx)`), None for a kind with no tab; `artifact` is the host folder the
    job writes into (None: the job's own destination)."""

    spec: type[JobSpec]
    runner: str | JobFn
    title: str
    tab: str | None = None
    artifact: ArtifactKind | None = None

    @property
    def kind(self) -> str:
        return self.spec.kind

    def load_runner(self) -> JobFn:
        if callable(self.runner):
            return self.runner
        module_name, _, attribute = self.runner.partition(":")
        return getattr(import_optional(module_name, self.title), attribute)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a kind (the built-in ones below; tests add toy kinds). A kind is registered once."""
    if not method.kind or method.kind in METHODS:
        raise ValueError(f"job kind {method.kind!r} is empty or registered twice")
    METHODS[method.kind] = method
    return method


def unregister(kind: str) -> None:
    METHODS.pop(kind, None)


register(
    Method(
        TextualInversionJob,
        "liandan.methods.textual_inversion:run_textual_inversion",
        "Textual Inversion",
        tab="liandan.ui.textual_inversion_tab",
        artifact="embeddings",
    )
)
register(
    Method(
        HypernetworkJob,
        "liandan.methods.hypernetwork:run_hypernetwork_job",
        "Hypernetwork",
        tab="liandan.ui.hypernetwork_tab",
        artifact="hypernetworks",
    )
)
register(
    Method(AptJob, "liandan.methods.apt:run_apt_job", "APT", tab="liandan.ui.apt_tab", artifact="embeddings")
)
register(
    Method(LoraJob, "liandan.methods.lora:run_lora_job", "LoRA", tab="liandan.ui.lora_tab", artifact="lora")
)
register(
    Method(
        DreamBoothJob,
        "liandan.methods.dreambooth:run_dreambooth_job",
        "DreamBooth",
        tab="liandan.ui.dreambooth_tab",
        artifact="checkpoints",
    )
)
register(
    Method(
        PreprocessJob,
        "liandan.preprocess.job:run_preprocess_job",
        "Preprocess & Caption",
        tab="liandan.ui.preprocess_tab",
    )
)

register(
    Method(
        AestheticJob,
        "liandan.methods.aesthetic:run_aesthetic_job",
        "Aesthetic embedding",
        tab="liandan.ui.aesthetic_tab",
        artifact="aesthetic_embeddings",
    )
)


def kinds() -> list[str]:
    return sorted(METHODS)


def method(kind: object) -> Method:
    """The entry of `kind`; a missing or unknown kind says so, with the nearest valid one."""
    if kind is None or kind == "":
        raise ConfigError(f"the job has no 'kind'; expected one of: {', '.join(kinds())}")
    if not isinstance(kind, str) or kind not in METHODS:
        close = difflib.get_close_matches(str(kind), kinds(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"job kind {kind!r} is unknown{hint} (expected one of: {', '.join(kinds())})")
    return METHODS[kind]


def spec_class(kind: object) -> type[JobSpec]:
    return method(kind).spec


def runner(kind: str) -> JobFn:
    return method(kind).load_runner()


def import_optional(module_name: str, what: str) -> Any:
    """Import one of our modules; a missing third-party package becomes MethodUnavailable naming it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if not missing or missing == "liandan":
            raise
        raise MethodUnavailable(
            f"{what} needs the Python package {missing!r}, which is not installed ({module_name})"
        ) from e
