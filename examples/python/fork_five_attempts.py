"""Fork five sandboxes from one prepared state, run a different attempt in each, keep the
winner and delete the rest.

    python3 fork_five_attempts.py
"""

import concurrent.futures as cf

from burrow import Burrow

# The task: make /work/solve.py print the 20th Fibonacci number (6765).
ATTEMPTS = [
    "def fib(n): return n\n",
    "def fib(n): return n * n\n",
    "def fib(n):\n    a, b = 0, 1\n    for _ in range(n): a, b = b, a + b\n    return a\n",
    "def fib(n): return 2 ** n\n",
    "def fib(n): return sum(range(n))\n",
]

with Burrow() as bw, bw.create("fork-base") as base:
    base.files.write("/work/check.py", "from solve import fib\nassert fib(20) == 6765, fib(20)\nprint('pass')\n")
    ready = base.checkpoint("task ready")
    forks = [base.fork(f"fork-try-{i}", ready) for i in range(len(ATTEMPTS))]

    def attempt(i: int) -> bool:
        forks[i].files.write("/work/solve.py", ATTEMPTS[i])
        return forks[i].run(["python3", "check.py"], cwd="/work").exit_code == 0

    with cf.ThreadPoolExecutor(len(forks)) as pool:
        results = list(pool.map(attempt, range(len(forks))))
    winner = forks[results.index(True)]
    for sb, ok in zip(forks, results, strict=True):
        print(f"{sb.name}: {'pass' if ok else 'fail'}")
        if sb is not winner:
            sb.delete()
    print("winner:", winner.name, winner.files.read_text("/work/solve.py").splitlines()[-1].strip())
    winner.delete()  # a real agent would keep it (or copy its result back)
