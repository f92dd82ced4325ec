"""Issue 22: the plan's allocation variants, one-shot (refine 0, recalibrated, compensation auto)."""
import sys, json, time, dataclasses
sys.path.insert(0, "/work/main/benchmarks")
import torch
torch.set_num_threads(1)
from held_out_models import RECIPES, trained
from vs_torch_pruning import ScoredOnce
from shapprune.zoo.data import load_dataset, Split, reference_set
from shapprune.zoo.cache import pretrained
from shapprune.pruning.compress import prune_model
from shapprune.evaluation.measure import evaluate
from shapprune.criteria.registry import get_criterion

name = sys.argv[1]; targets = [float(t) for t in sys.argv[2].split(",")]
VARS = {"A l1/mac h1": dict(global_=True), "B lamp h1": dict(global_=True, normalisation="lamp", cost=None),
  "C lamp/mac h1": dict(global_=True, normalisation="lamp"), "D l1/mac h.5": dict(global_=True, headroom=0.5),
  "E lamp h.5": dict(global_=True, normalisation="lamp", cost=None, headroom=0.5), "per-layer": dict(global_=False)}
names = sys.argv[3].split(",") if len(sys.argv) > 3 and sys.argv[3] else list(VARS)
refine = int(sys.argv[4]) if len(sys.argv) > 4 else 0
data = load_dataset("mnist5k")
model = trained(name, data, RECIPES[name])[0] if name in RECIPES else pretrained(name, "mnist5k", progress=False)[0]
model.eval()
ref = reference_set(data.val, per_class=25, seed=0, classes=data.classes)
print(name, "before", evaluate(model, data.test)["accuracy"], flush=True)
two = dataclasses.replace(data, test=Split(data.test.x[:2], data.test.y[:2]))
crit = ScoredOnce(get_criterion("lrp"))
variants = [(n, v) for n, v in VARS.items() if any(n.startswith(x) for x in names)]
for t in targets:
    for label, opts in variants:
        s = time.perf_counter()
        pruned, summary = prune_model(model, two, crit, f"macs={t}", per_class=25, seed=0, refine=refine, **opts)
        r = evaluate(pruned, ref); acc = evaluate(pruned, data.test)["accuracy"]
        removed = summary["removed"]; sizes = {k: len(v) for k, v in summary["plans"][0]["scores"].items()}
        worst = max(removed, key=lambda k: removed[k] / sizes[k])
        print(json.dumps({"model": name, "target": t, "variant": label, "test_acc": round(acc, 4),
              "ref_loss": round(r["loss"], 4), "ref_acc": round(r["accuracy"], 4),
              "comp": summary["plans"][0].get("info", {}).get("compensated", summary["plans"][0].get("compensated")),
              "max_layer_cut": f"{worst} {removed[worst]}/{sizes[worst]}", "s": round(time.perf_counter() - s, 1)}), flush=True)
