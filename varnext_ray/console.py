"""A quiet console for train and sweep: Ray's own chatter off unless ``varnext -v``.

What stays on the console: Tune's trial table, each trial's configuration and a short result
(the objective, its best, copy-last, skill, epoch), one progress line per epoch from rank 0,
warnings and errors. What goes (to Ray's log files only): Ray Train's per-rank
"Reporting training result ..." dumps, worker-group and checkpoint notes (``ray.train`` logs
below WARNING, through ``ray.train.RunConfig(logging_config=...)`` and
:func:`quiet_train_worker`), Ray Data's "Starting execution of Dataset ..." / "Execution
plan ..." notes (``RAY_DATA_LOG_LEVEL``), and deprecation warnings from Ray's internal actors
(``PYTHONWARNINGS``).

``varnext -v ...`` (or ``VARNEXT_VERBOSE=1``) brings all of them back. The setting reaches
every Ray process of the job through :func:`ray_env_vars`, which
:func:`~varnext_ray.cluster.connect_ray` puts in the job's runtime environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Any

from varnext_ray.errors import UserError, escape

VERBOSE_ENV = "VARNEXT_VERBOSE"
QUIET_ENV = {
    "RAY_DATA_LOG_LEVEL": "WARNING",  # Ray Data's per-dataset execution notes
    "PYTHONWARNINGS": "ignore::DeprecationWarning",  # Ray's own, from its internal actors
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables...", etc.
}
# Loggers of notes that Ray writes at WARNING level about settings varnext chose on purpose:
# the token auth a new local Ray gets ("Token authentication is enabled for this Ray cluster")
# and the progress bars it turns off ("Progress bars disabled", once per process).
CHOSEN_SETTING_NOTES = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.progress",
)


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when each record comes, not as it was
    when the handler was made: a caller that swaps standard error (pytest's capture, a
    redirect) never gets a record written to a stream closed since ("--- Logging error ---"
    and a traceback, from a library's thread that logged late)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler sets it; the live one is used
        pass


def reopen_closed_streams() -> None:
    """Points every stream handler of the loggers made so far whose stream was closed (a
    standard error swapped and closed since, as pytest's capture does between tests) at the
    current ``sys.stderr``. Ray's own handler keeps the stream of its first import, although
    it means to follow ``sys.stderr``: its warnings then ended in "--- Logging error ---"."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, "closed", False):
                with handler.lock or contextlib.nullcontext():  # not setStream: it flushes
                    handler.stream = sys.stderr


class OneLineFormatter(logging.Formatter):
    """Log lines whose message has its control characters escaped (:func:`errors.escape`): a
    warning that quotes a file name holding a newline cannot print a second, forged line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))


def set_verbose(verbose: bool) -> None:
    """Records the choice for this process and the Ray processes it starts (call it before
    Ray is imported: Ray Data reads ``RAY_DATA_LOG_LEVEL`` when it configures its logger)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    for key, value in ray_env_vars().items():
        os.environ.setdefault(key, value)
    if not is_verbose():  # MLflow's per-download progress bar (best, demo, predict --model)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def is_verbose() -> bool:
    """Whether Ray's own INFO logs go to the console (``varnext -v``, or VARNEXT_VERBOSE=1)."""
    return env_flag(VERBOSE_ENV, "set it to 1 for Ray's own logs, else unset it")


def env_flag(name: str, fix: str) -> bool:
    """A yes/no environment variable: "1", "true", "yes", "on" mean yes; "0", "false", "no",
    "off" or empty (or unset) mean no; anything else is a UserError whose fix is ``fix``."""
    text = os.environ.get(name, "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise UserError(f"{name} must be 1 or 0 (got {text[:40]!r})", name, fix)


def ray_env_vars() -> dict[str, str]:
    """Environment variables for every process of the Ray job (its runtime environment)."""
    if is_verbose():
        return {VERBOSE_ENV: "1"}
    return {k: os.environ.get(k, v) for k, v in QUIET_ENV.items()}


def train_logging_config() -> Any:
    """Ray Train's ``LoggingConfig``: INFO with ``-v``, else WARNING (no per-rank
    "Reporting training result ..." lines, no worker-group notes)."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if is_verbose() else "WARNING")


def quiet_train_worker() -> None:
    """In a Ray Train worker: no "Reporting training result ..." line per report and rank
    unless ``-v``. Ray 2.60 logs it on a logger named after its source file, outside the
    ``ray.train`` loggers that ``LoggingConfig`` filters.

    Also silences DDP's "Grad strides do not match bucket view strides" note: the decoder's
    1x1 convolution out of a spatial latent gets its (C, c, 1, 1) gradient with other strides
    for the size-1 dimensions, which costs one copy of a few hundred numbers per step; and
    torch's note that a batch Ray Data passes without a copy is read-only (see below).
    """
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Ray Data hands a batch from the object store to torch.as_tensor without a copy; torch
    # warns once per process that the array is read-only. The loop never writes into a batch
    # (to_model_input makes a new float tensor), so the zero-copy read stays and the note goes.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if is_verbose():
        return
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)
    for name in CHOSEN_SETTING_NOTES:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_ray_driver() -> int:
    """In the CLI's process, before ``ray.init``: the "ray" logger's level for ``ray.init``
    (INFO with ``-v``; else WARNING: no "Started a local Ray instance", no Tune's "Wrote the
    latest version of all result files"), and the :data:`CHOSEN_SETTING_NOTES` off."""
    if is_verbose():
        return logging.INFO
    for name in CHOSEN_SETTING_NOTES:
        logging.getLogger(name).setLevel(logging.ERROR)
    return logging.WARNING


def quiet_ray_data() -> None:
    """Ray Data in this process: no "Starting execution of Dataset ..." notes unless ``-v``,
    and no traceback of an exception a task raised: the executor logs it, then raises it to
    the caller, where the CLI prints its one line (a damaged frame) or saves it (a bug)."""
    import ray.data

    ray.data.DataContext.get_current().print_on_execution_start = is_verbose()
    if not is_verbose():
        from ray.data import exceptions
        from ray.data._internal.execution import streaming_executor_state

        for module in (streaming_executor_state, exceptions):
            logging.getLogger(module.__name__).setLevel(logging.CRITICAL)


def progress_metrics(objective: str) -> list[str]:
    """The metrics of Tune's per-trial result box (Tune shows every metric otherwise)."""
    keys = [objective, f"best_{objective}", "copy_last_psnr", "extrap_skill", "epoch"]
    return list(dict.fromkeys(keys))
