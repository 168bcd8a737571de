"""Write a small tree of outputs; job.yaml's outputs: picks which of them are delivered."""

from pathlib import Path

files = {
    "results/top.csv": "x,y\n1,2\n",
    "results/run-a/values.csv": "a\n1\n",
    "results/run-a/deep/more.csv": "b\n2\n",
    "results/notes.md": "not delivered: does not match an outputs glob\n",
    "scratch/tmp.log": "not delivered either\n",
}
for rel, text in files.items():
    path = Path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
Path("summary.txt").write_text(f"{sum(1 for r in files if r.endswith('.csv'))} csv files\n")
print("wrote", len(files) + 1, "files")
