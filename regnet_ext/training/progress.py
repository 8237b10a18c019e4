"""Progress display: a tqdm bar when tqdm is installed, otherwise plain lines; all on stderr so
that a command's stdout stays machine-readable."""
import sys


class Progress:
    """Per-epoch progress over ``total`` steps; silent when ``enabled`` is False."""

    def __init__(self, total, description, enabled=True):
        self.enabled = enabled
        self.total = total
        self.description = description
        self.done = 0
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=description, file=sys.stderr, leave=False,
                                 dynamic_ncols=True)

    def update(self, **postfix):
        self.done += 1
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def log(message, enabled=True):
    """A line for the user, written so that it does not break a running tqdm bar."""
    if not enabled:
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(message, file=sys.stderr, flush=True)
        return
    tqdm.write(message, file=sys.stderr)
