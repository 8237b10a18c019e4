"""JSON Lines files: one record per line, appended durably, read back tolerant of a torn last line.

A sweep killed while writing can leave a partial last line; it is the only damage an append-only
file can suffer, so readers drop it (and ``repair=True`` truncates it away) instead of failing.
"""
import json
import os
import tempfile


def dumps(record):
    """One canonical line (sorted keys, no spaces): equal records give equal bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def append_record(path, record):
    """Appends one record and forces it to disk before returning."""
    line = dumps(record) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_records(path, records):
    """Replaces the file's content atomically (write a temporary file, then rename it)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jsonl", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_records(path, *, repair=False):
    """All complete records of a JSONL file ([] if it does not exist).

    A last line without its newline or that does not parse is a torn write: it is dropped, and
    with ``repair=True`` cut from the file so that later appends start on a clean line. A bad line
    anywhere else means the file is not ours: ValueError."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records, good_bytes = [], 0
    for i, raw in enumerate(lines):
        try:
            records.append(json.loads(raw))
        except ValueError:
            if i == len(lines) - 1 and not tail:
                break  # the last full line is torn (its end got written, its start did not)
            raise ValueError(f"{path}: line {i + 1} is not a JSON record") from None
        good_bytes += len(raw) + 1
    if repair and good_bytes != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return records


def read_input(path, name, what="records"):
    """The records of an input file; ValueError naming the argument ``name`` when the file does not
    exist or holds no records (read_records returns [] for both: a sweep's new output file)."""
    if not os.path.isfile(path):
        raise ValueError(f"{name}: {path} does not exist" if not os.path.exists(path)
                         else f"{name}: {path} is not a file")
    records = read_records(path)
    if not records:
        raise ValueError(f"{name}: {path} holds no {what}")
    return records
