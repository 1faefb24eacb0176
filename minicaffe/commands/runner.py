"""Running a parsed ``minicaffe`` command: logging set up, then errors turned into
``minicaffe: error: ...`` and exit codes (cli.main, and each rank that
``train --gpu 0,1`` spawns, see minicaffe/parallel/gpu_ranks.py)."""
import os
import sys

from .. import interrupt
from ..errors import MinicaffeError
from ..glog import setup_logging

PROG = 'minicaffe'


def run_reporting_errors(args, verbosity, log_file, prefix=''):
    """Set up logging and run the parsed command; errors become ``minicaffe:
    error: <prefix><message>`` and an exit code (also in the ranks that
    ``train --gpu 0,1`` spawns)."""
    try:
        setup_logging(verbosity, log_file=log_file)
        if getattr(args, 'threads', None) is not None:
            from ..threads import set_num_threads
            set_num_threads(args.threads)
        code = args._run(args)
        return 0 if code is None else int(code)
    except KeyboardInterrupt:
        print(interrupt.MESSAGE, file=sys.stderr)
        return interrupt.EXIT_CODE
    except BrokenPipeError:           # `minicaffe ... | head`: stop quietly, as a killed pipe does
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except MinicaffeError as e:
        print('%s: error: %s%s' % (PROG, prefix, e), file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        what = e.filename if e.filename is not None else e
        print('%s: error: %s%s: %s' % (PROG, prefix, what, e.strerror or 'file not found'),
              file=sys.stderr)
        return 2
    except SystemExit as e:           # argparse: --help (0) / usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
