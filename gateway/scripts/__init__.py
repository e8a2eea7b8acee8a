"""Running local scripts and long-lived commands for requests, safely.

- argv comes from the config only; a request reaches a script through its
  stdin (the payload, verbatim) and environment variables.  No shell runs.
- a script is done when its process exits, not when its pipes close (a
  child that inherited stdout must not hold the answer hostage); what it
  printed is collected for a short grace period after the exit;
- nothing of a script outlives its answer: its process group is killed, and
  so is every descendant that left the group (``setsid``, a double fork),
  found by a tag in its environment and by parent links (:mod:`.tree`);
- the gateway's ends of a script's pipes are always closed, whatever holds
  the other ends, so no descriptor leaks; a script inherits no descriptor
  but its stdin, stdout and stderr;
- stdout is read up to a limit; stderr is kept only in part, for the log;
- exit status 0 is success, 65 (EX_DATAERR) means "the client's input was
  wrong" and becomes 4.00 with the script's output as the reason; anything
  else becomes 5.00 with a short diagnostic.

The rooms: :mod:`.tree` (tags, the walk over /proc, killing), :mod:`.process`
(starting a tagged process, collecting its output), :mod:`.run` (one script,
one answer), :mod:`.lines` (the one supervisor of long-lived line-printing
commands: watchers, the pairing button, persistent handlers) and
:mod:`.environment`.
"""

from .environment import base_environment, prepare_data_dir
from .lines import LineProcess, supervise_lines
from .process import (
    CLOSE_WAIT_S,
    EXIT_GRACE_S,
    STDERR_KEEP_BYTES,
    ScriptFailure,
    ScriptResult,
)
from .run import EXIT_BAD_INPUT, run_script
from .tree import (
    MAX_RESWEEP_TAGS,
    RESWEEP_S,
    TAG_VARIABLE,
    kill_tree,
    new_tag,
    process_tree,
    tagged_environment,
)

__all__ = [
    "CLOSE_WAIT_S",
    "EXIT_BAD_INPUT",
    "EXIT_GRACE_S",
    "MAX_RESWEEP_TAGS",
    "RESWEEP_S",
    "STDERR_KEEP_BYTES",
    "TAG_VARIABLE",
    "LineProcess",
    "ScriptFailure",
    "ScriptResult",
    "base_environment",
    "kill_tree",
    "new_tag",
    "prepare_data_dir",
    "process_tree",
    "run_script",
    "supervise_lines",
    "tagged_environment",
]
