"""Run untrusted code and return its output.

A fresh sandbox per job, no network, small limits and a deadline; the sandbox is deleted
when the block ends, whatever the code did.

    python3 run_untrusted_code.py 'print(sum(range(10)))'
"""

import json
import sys
import uuid

from burrow import Burrow, CommandTimeout


def run_untrusted(bw: Burrow, code: str, timeout: float = 10.0) -> dict[str, object]:
    with bw.create(f"job-{uuid.uuid4().hex[:8]}", memory_mb=256, cpus=0.5) as sb:
        sb.set_network_policy("none")  # nothing leaves the sandbox
        sb.files.write("/job/main.py", code)
        try:
            r = sb.run(["python3", "/job/main.py"], timeout=timeout, cwd="/job", user="nobody")
        except CommandTimeout as e:
            return {"ok": False, "error": f"timed out after {timeout} s", "stdout": e.stdout}
        return {"ok": r.exit_code == 0, "exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}


if __name__ == "__main__":
    code = sys.argv[1] if len(sys.argv) > 1 else "import os\nprint('hello from', os.uname().nodename)"
    with Burrow() as bw:
        print(json.dumps(run_untrusted(bw, code)))
        # Hostile code stays in its box: it ends at the deadline and cannot reach the network.
        print(json.dumps(run_untrusted(bw, "while True: pass", timeout=1)))
        print(json.dumps(run_untrusted(bw, "import socket\nsocket.getaddrinfo('example.com', 443)")))
