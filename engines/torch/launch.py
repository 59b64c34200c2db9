"""torchrun for the train stage: `python launch.py [torchrun flags] train.py JOB.json`.

This is torch.distributed.run itself (the same flags: --nproc-per-node,
--nnodes, --node-rank, --rdzv-endpoint, --rdzv-backend, --rdzv-id, ...), with one
difference: when a worker fails, the worker has already printed why, so the
elastic agent's own report (a Python traceback and a failure table) is not
printed; the launcher exits with the worker's exit code, and says which process
failed unless that worker explained itself (exit codes 3 and 130, train.py's).
"""

import logging
import os
import signal
import sys

EXPLAINED = (3, 130)


def say(msg: str) -> None:
    """One line for the user: into the train stage's error file when it gave one, else on stderr."""
    to = os.environ.get("GLM_TORCH_ERROR_FILE")
    if to:
        with open(to, "a", encoding="utf-8") as f:
            f.write(msg + "\n")
    else:
        print(f"train (torch): {msg}", file=sys.stderr)


def main() -> None:
    try:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import get_args_parser, run
    except ImportError as e:
        say(f"{e.name} is not installed for {sys.executable}: run `deno task setup-torch` "
            "(or set GLM_TORCH_PYTHON to a Python that has torch, transformers, peft and accelerate)")
        sys.exit(3)
    import torch.distributed.elastic.multiprocessing.api as mp_api

    # Ctrl-C: the workers run in sessions of their own, so the terminal's SIGINT reaches only this
    # agent. It passes SIGINT on to them and keeps waiting: each finishes its step, saves a
    # checkpoint and exits 130. (torchrun's own handler would stop them after 30 s, mid-save for a
    # large model.) SIGTERM still stops everything at once.
    import psutil  # an accelerate dependency

    terminate = mp_api._terminate_process_handler

    def on_signal(signum, frame):
        if signum != signal.SIGINT:
            terminate(signum, frame)
            return
        for child in psutil.Process().children():
            try:
                child.send_signal(signal.SIGINT)
            except psutil.NoSuchProcess:
                pass

    mp_api._terminate_process_handler = on_signal
    args = get_args_parser().parse_args(sys.argv[1:])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun's banner saying it gives each process OMP_NUM_THREADS=1 (the right share of a CPU).
    logging.getLogger("torch.distributed.run").setLevel(logging.ERROR)
    try:
        run(args)
    except mp_api.SignalException as e:
        sys.exit(128 + e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        if code not in EXPLAINED:
            say(f"process {rank} failed (exit code {failure.exitcode}); its output is above")
        sys.exit(code)


if __name__ == "__main__":
    main()
