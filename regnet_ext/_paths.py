"""The check of an output file's path that the commands and regnet_ext.deploy share."""
import os


def check_output_path(option, path):
    """Refuses an output path that cannot be written, before any work is done (not with a
    traceback once it is): a directory, a missing folder, a read-only place. ValueError naming
    the option; None passes."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path} is a directory; expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option}: the folder of {path} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "a"):  # appending changes nothing; a file made just for the check goes
            pass
    except OSError as e:
        raise ValueError(f"{option}: cannot write {path} ({e.strerror})") from None
    if not existed:
        os.unlink(path)
