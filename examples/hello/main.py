"""A first bundle: prints, reports progress, and leaves a result file in output/."""

from pathlib import Path

from hivemind.task import report_progress

print("hello from a HiveMind worker")
total = 0
for i in range(1, 11):
    total += i
    report_progress(i / 10, f"step {i}/10")
Path("output").mkdir(exist_ok=True)
Path("output/sum.txt").write_text(f"{total}\n")
print(f"sum of 1..10 is {total}; wrote output/sum.txt")
