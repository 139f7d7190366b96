"""An agent loop that checkpoints before each risky step, lets a command wreck the disk,
notices, and restores.

    python3 agent_checkpoint_restore.py
"""

from burrow import Burrow, Sandbox

STEPS = [
    "python3 -c \"open('/project/notes.txt','a').write('step one\\n')\"",
    "rm -rf /project /usr/lib/python3*",  # the agent's bad idea
    "python3 -c \"open('/project/notes.txt','a').write('step three\\n')\"",
]


def healthy(sb: Sandbox) -> bool:
    return sb.run("test -f /project/app.py && python3 /project/app.py").exit_code == 0


with Burrow() as bw, bw.create("agent-demo") as sb:
    sb.files.write("/project/app.py", "print('app ok')\n")
    for i, step in enumerate(STEPS, 1):
        cp = sb.checkpoint(f"before step {i}")
        r = sb.run(step)
        print(f"step {i}: exit {r.exit_code}")
        if not healthy(sb):
            back = sb.restore(cp)
            print(f"step {i} broke the sandbox; restored {back.restored} (the wreck is kept as {back.backup})")
            assert healthy(sb)
    print(sb.files.read_text("/project/notes.txt"), end="")
    print("checkpoints:", [f"{c.id}: {c.comment}" for c in sb.checkpoints()])
