"""``%gpusched form``: an ipywidgets form that submits a job or a sweep.

Every field is checked at Submit by the checks of :mod:`nbsched.checks` that the
scheduler, ``nbsched`` and ``%gpusched`` use: a mistake is shown inline and nothing is
queued; a success shows the new job ids.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbsched.checks import check_args, gpus_from_text
from nbsched.errors import InvalidValueError, NbschedError, SweepTooLargeError
from nbsched.scheduler import GPUJobScheduler

logger = logging.getLogger(__name__)

NO_ENV = "(none)"
NO_MODEL = ""
CONDA_TIMEOUT_S = 20.0


def conda_envs(timeout: float = CONDA_TIMEOUT_S) -> list[str] | None:
    """Names of the conda environments (``conda env list --json``), ``None`` without conda."""
    exe = os.environ.get("CONDA_EXE") or shutil.which("conda")
    if not exe or not os.path.isfile(exe):
        return None
    try:
        out = subprocess.run(
            [exe, "env", "list", "--json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
        paths = json.loads(out).get("envs", [])
    except (OSError, subprocess.SubprocessError, ValueError, AttributeError) as exc:
        logger.warning("conda env list failed: %s", exc)
        return None
    names = []
    for i, p in enumerate(paths):
        name = Path(p).name
        names.append("base" if i == 0 and "envs" not in Path(p).parts else name)
    return names


_WIDE = {"width": "520px"}
_STYLE = {"description_width": "110px"}


class SubmitForm(widgets.VBox):  # type: ignore[misc]  # (ipywidgets is untyped)
    """Script, conda env, arguments, GPUs, allowed GPUs, priority, time limit and expected
    run time, LLM model, sweep, after, notify, snapshot, Submit.

    ``conda_env_names`` overrides the ``conda env list`` lookup (``[]`` for none).
    ``submitted`` lists every id queued through the form.
    """

    def __init__(
        self, scheduler: GPUJobScheduler, conda_env_names: Sequence[str] | None = None
    ) -> None:
        self.scheduler = scheduler
        self.submitted: list[str] = []
        self.error: str | None = None
        self._make_inputs(conda_env_names)
        self._make_choices()
        self.submit_button = widgets.Button(
            description="Submit", button_style="primary", icon="play"
        )
        self.submit_button.on_click(lambda _: self._on_click())
        self.submit_button.add_class("nbsched-submit")
        self.result = widgets.HTML()
        self.result.add_class("nbsched-form-message")
        super().__init__(children=self._rows())
        fields = [self.script, self.conda_env, self.arguments, self.gpus, self.memory, self.sweep]
        times = [self.time_limit, self.expected]
        others = [self.after, self.notify, self.snapshot, self.priority, self.llm_model]
        for field in [*fields, *times, *others, *self.allowed]:
            field.observe(lambda _: self._clear_error(), names="value")

    def _make_inputs(self, conda_env_names: Sequence[str] | None) -> None:
        """The text fields: script (checked as typed), conda env, arguments, GPUs, sweep."""
        wide, style = _WIDE, _STYLE
        self.script = widgets.Text(
            description="script", placeholder="train.py", layout=wide, style=style
        )
        self.script_check = widgets.HTML()
        self.script.observe(lambda _: self._check_script(), names="value")

        envs = list(conda_env_names) if conda_env_names is not None else conda_envs()
        self.conda_env: widgets.Dropdown | widgets.Text
        if envs:
            self.conda_env = widgets.Dropdown(
                description="conda env", options=[NO_ENV, *envs], value=NO_ENV, style=style
            )
        else:
            self.conda_env = widgets.Text(
                description="conda env", placeholder="(none: this Python)", style=style
            )
        self.arguments = widgets.Text(
            description="arguments", placeholder="--epochs 10", layout=wide, style=style
        )
        self.gpus = widgets.Text(
            description="GPUs",
            placeholder="fraction in (0, 1] or whole number; empty: default",
            layout=wide,
            style=style,
        )
        self.time_limit = widgets.Text(
            description="time limit", placeholder="e.g. 2h30m (empty: none)", style=style
        )
        self.expected = widgets.Text(
            description="expected", placeholder="e.g. 10m: a hint (empty: none)", style=style
        )
        self.memory = widgets.Text(
            description="GPU memory",
            placeholder="optional: 18G or 512M free on each of its GPUs (G = GiB)",
            layout=wide,
            style=style,
        )
        self.sweep = widgets.Text(
            description="sweep",
            placeholder="optional: --lr {0.1,0.01} --seed {1..3} (one job per combination)",
            layout=wide,
            style=style,
        )
        self.after = widgets.Text(
            description="after",
            placeholder="optional: start after jobs 12,13 (or sw3) succeeded; any:12;started:14",
            layout=wide,
            style=style,
        )

    def _make_choices(self) -> None:
        """The allowed-GPU toggles, the priority, the LLM model (which fills in GPUs),
        notify and snapshot."""
        style, scheduler = _STYLE, self.scheduler
        n = scheduler.num_gpus
        self.allowed = [
            widgets.ToggleButton(description=str(i), layout={"width": "44px"}) for i in range(n)
        ]
        for toggle in self.allowed:  # pressed looks pressed: filled
            toggle.add_class("nbsched-gpu-toggle")
            toggle.observe(_show_pressed, names="value")
        self.priority = widgets.IntText(description="priority", value=0, style=style)
        llm = scheduler.llm_config
        models = sorted(llm.models.items()) if llm is not None else []
        self.llm_model = widgets.Dropdown(
            description="LLM model",
            options=[("(none)", NO_MODEL)] + [(f"{m} ({g:g} GPU)", m) for m, g in models],
            value=NO_MODEL,
            disabled=not models,
            style=style,
        )
        self.notify = widgets.Text(
            description="notify",
            placeholder="optional: webhook URL or mail address at the end (several: a, b)",
            layout=_WIDE,
            style=style,
        )
        self.snapshot = widgets.Checkbox(
            description="snapshot: run a copy of the code as it is now",
            value=bool(scheduler.config.snapshot),
            indent=False,
        )
        self._gpus_without_model = ""  # the GPUs field before a model was chosen
        self._gpus_from_model: str | None = None  # what the chosen model wrote there
        self.llm_model.observe(self._model_chosen, names="value")

    def _rows(self) -> list[Any]:
        return [
            widgets.HBox([self.script, self.script_check]),
            self.conda_env,
            self.arguments,
            self.gpus,
            self.memory,
            widgets.HBox(
                [
                    widgets.Label("allowed GPUs", layout={"width": "114px"}),
                    *self.allowed,
                    widgets.Label("(none pressed: any)"),
                ]
            ),
            self.priority,
            widgets.HBox([self.time_limit, self.expected]),
            self.llm_model,
            self.sweep,
            self.after,
            self.notify,
            widgets.HBox([widgets.Label("", layout={"width": "114px"}), self.snapshot]),
            self.submit_button,
            self.result,
        ]

    # -- live checks ----------------------------------------------------------------------

    def _check_script(self) -> bool:
        text = self.script.value.strip()
        if not text:
            self.script_check.value = ""
            return False
        path = Path(text).expanduser()
        if path.is_file():
            self.script_check.value = "<span style='color:#0f5132'>&#10004; found</span>"
            return True
        self.script_check.value = (
            f"<span style='color:#842029'>&#10008; no such file: {html.escape(str(path))}</span>"
        )
        return False

    def _model_chosen(self, change: dict[str, Any]) -> None:
        """A model sets the GPUs field; back to "(none)", the field gets what it held
        before, unless it was edited since the model set it."""
        llm = self.scheduler.llm_config
        if not change["old"]:
            self._gpus_without_model = self.gpus.value
        model = change["new"]
        if llm is not None and model:
            self._gpus_from_model = f"{llm.models.get(model, llm.default_requirement):g}"
            self.gpus.value = self._gpus_from_model
        elif not model:
            if self.gpus.value == self._gpus_from_model:
                self.gpus.value = self._gpus_without_model
            self._gpus_from_model = None

    # -- submitting -----------------------------------------------------------------------

    def _on_click(self) -> None:
        try:
            self.submit()
        except Exception as exc:  # a widget callback is a boundary: show, never raise
            logger.exception("nbsched form: submit failed")
            self._show_error(f"{type(exc).__name__}: {exc}")

    def submit(self) -> list[str]:
        """Submit what the form holds; returns the new ids (``[]`` on a mistake)."""
        s = self.scheduler
        try:
            gpus = _gpus(self.gpus.value)
            args = self.arguments.value.strip()
            model = self.llm_model.value
            if model and "--llm" not in args.split() and "--llm=" not in args:
                args = f"--llm {shlex.quote(model)} {args}".strip()
            env = self.conda_env.value.strip()
            options: dict[str, Any] = {
                "conda_env": env if env and env != NO_ENV else None,
                "priority": self.priority.value,
                "required_gpus": gpus,
                "allowed_gpus": [i for i, b in enumerate(self.allowed) if b.value] or None,
                "after": self.after.value.strip() or None,
                # (the API reads "2h30m" or seconds, and names a bad one)
                "time_limit": self.time_limit.value.strip() or None,
                "expected_s": self.expected.value.strip() or None,
                "gpu_memory": self.memory.value.strip() or None,
                "notify": _notify(self.notify.value),
                "snapshot": bool(self.snapshot.value),
            }
            script = self.script.value.strip()
            if not script:
                raise InvalidValueError("script: give the path of the script to run")
            sweep = self.sweep.value.strip()
            if sweep:
                swept = s.add_sweep(script, args=f"{args} {sweep}".strip(), **options)
                ids, text = swept.queued, swept.describe()  # (the new ones; all: swept)
            else:
                ids = [s.add_job(script, args=check_args(args), **options)]
                text = f"queued job {ids[0]}"
        except SweepTooLargeError as exc:  # (the API's advice, limit=N, is not the form's)
            self._show_error(
                f"sweep of {exc.jobs} jobs exceeds the limit of {exc.limit}: the form submits "
                f"at most {exc.limit}; split the sweep, or submit it with "
                f"%gpusched sweep ... --limit {exc.jobs}"
            )
            return []
        except (NbschedError, ValueError, TypeError, FileNotFoundError) as exc:
            self._show_error(_in_form_words(str(exc)))
            return []
        self.error = None
        self.submitted.extend(ids)
        self.result.value = f"<span style='color:#0f5132'>&#10004; {html.escape(text)}</span>"
        return list(ids)

    def _clear_error(self) -> None:
        """A field changed: the error shown was about what the form held before."""
        if self.error is not None:
            self.error = None
            self.result.value = ""

    def _show_error(self, text: str) -> None:
        self.error = text
        self.result.value = (
            f"<span style='color:#842029'>&#10008; {html.escape(text)} (nothing submitted)</span>"
        )


#: The API's names in an error (``required_gpus=4: ...``) -> the form's labels.
_LABELS = {
    "required_gpus": "GPUs",
    "allowed_gpus": "allowed GPUs",
    "gpu_memory": "GPU memory",
    "conda_env": "conda env",
    "args": "arguments",
    "time_limit": "time limit",
    "expected_s": "expected",
}
_API_NAME = re.compile(rf"\b({'|'.join(_LABELS)})(?=[=:]|\s\[)")


def _in_form_words(text: str) -> str:
    """An error of the scheduler in the words of the form: its fields' labels."""
    return _API_NAME.sub(lambda m: _LABELS[m.group(1)], text)


def _notify(text: str) -> list[str] | None:
    """The notify field: webhook URLs and mail addresses, apart by commas or spaces
    (the API checks each, and names a bad one); empty: None (the config's default)."""
    words = [w for w in re.split(r"[,\s]+", text) if w]
    return words or None


def _show_pressed(change: dict[str, Any]) -> None:
    """A pressed GPU toggle filled (ipywidgets' own pressed look is a shade)."""
    change["owner"].button_style = "info" if change["new"] else ""


def _gpus(text: str) -> float | None:
    """The GPUs field (empty: the default), read by the rule ``--gpus`` uses, so the form
    refuses a value with the words of ``nbsched`` and ``%gpusched``."""
    text = text.strip()
    if not text:
        return None
    try:
        return gpus_from_text(text)
    except InvalidValueError as exc:
        raise InvalidValueError(f"GPUs: {exc}") from None
