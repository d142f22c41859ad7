"""Every document the project points to is in the project: each path to a `.md` file named
in a tracked file (from the repository's root or from the file's folder) must exist, and none
may lead out of the repository (`../`). In Rust sources, only paths into the repository's own
folders count (their tests name made-up files). Run from the repository's root; exits 1
naming each reference that points nowhere."""
import os
import re
import subprocess
import sys

files = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
top = {f.split("/")[0] for f in files if "/" in f} | {".."}
bad = []
for f in files:
    try:
        text = open(f, encoding="utf-8").read()
    except (UnicodeDecodeError, IsADirectoryError):
        continue
    for m in re.finditer(r"(?<![\w/:.-])((?:\.\./|[\w.-]+/)+[\w-]+\.md)\b", text):
        ref = m.group(1)
        if f.endswith(".rs") and ref.split("/")[0] not in top:
            continue  # test data of a Rust test, not a document
        beside = os.path.normpath(os.path.join(os.path.dirname(f), ref))
        inside = not os.path.normpath(ref).startswith("..") or not beside.startswith("..")
        if not inside or not (os.path.exists(ref) or os.path.exists(beside)):
            bad.append(f"{f}: {ref}")
if bad:
    print("documents referred to that are not in this repository:\n  " + "\n  ".join(bad))
    sys.exit(1)
