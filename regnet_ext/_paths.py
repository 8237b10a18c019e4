"""Output files' paths that the commands, regnet_ext.deploy and the benchmarks share: the checks
that one can be written, the name a matplotlib plot is saved under, and writing one whole."""
import contextlib
import os
import tempfile


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


def check_output_path_in_new_folders(option, path):
    """check_output_path for writers that create missing folders (training checkpoints, the
    benchmarks' results): the nearest existing folder above ``path`` must be a writable
    directory. ValueError naming the option."""
    if os.path.isdir(path):
        raise ValueError(f"{option}: {os.fspath(path)!r} is a directory; expected a file path")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"{option}: cannot write {os.fspath(path)!r}: {folder!r} is not a directory")
    try:  # os.access says yes to root on read-only or special file systems: try it
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{option}: cannot write {os.fspath(path)!r}: {folder!r} is not writable") from e


@contextlib.contextmanager
def replaced_whole(path):
    """Yields a temporary path beside ``path`` to write; once the block ends without an exception
    it replaces ``path``, and the temporary file never outlives the block: an interrupted write
    (Ctrl-C) leaves ``path`` as it was, never a truncated file."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def plot_path(path, option="path"):
    """The file a plot saved to ``path`` goes to: ``path`` with ".png" added when it has no
    extension (savefig would add its default format's, which a matplotlibrc may change), else
    ``path`` itself; ValueError naming ``option`` when matplotlib writes no such format. A path
    naming a directory is returned as it is, for the caller's output-path check to refuse."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1][1:]
    if not ext:
        if not os.path.basename(path).rstrip(".") or os.path.isdir(path):
            return path
        return path.rstrip(".") + ".png"  # savefig's own spelling: "edf." -> "edf.png"
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if ext.lower() not in formats:
        raise ValueError(f"{option}: matplotlib cannot write .{ext} files ({path}); use one of "
                         f"{', '.join(sorted(formats))}, or no extension for png")
    return path
