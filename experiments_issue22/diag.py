"""Issue 22 diagnosis: prune_model defaults (recalibrate on) and variants on a model, one seed."""
import sys, json, time, dataclasses
sys.path.insert(0, "/work/main/benchmarks")
import torch
torch.set_num_threads(1)
from held_out_models import RECIPES, trained
from shapprune.zoo.data import load_dataset, Split
from shapprune.zoo.cache import cache_dir
from shapprune.pruning.compress import prune_model
from shapprune.evaluation.measure import evaluate
from shapprune.criteria.registry import get_criterion

name = sys.argv[1]; targets = [float(t) for t in sys.argv[2].split(",")]
variants = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {"defaults": {}}
data = load_dataset("mnist5k")
if name in RECIPES:
    model, _ = trained(name, data, RECIPES[name])
else:
    from shapprune.zoo.cache import pretrained
    model, _ = pretrained(name, "mnist5k", progress=False)
model.eval()
print(name, "before", evaluate(model, data.test)["accuracy"], flush=True)
two = dataclasses.replace(data, test=Split(data.test.x[:2], data.test.y[:2]))
for t in targets:
    for label, opts in variants.items():
        s = time.perf_counter()
        pruned, summary = prune_model(model, two, get_criterion("lrp"), f"macs={t}", per_class=25, seed=0, **opts)
        acc = evaluate(pruned, data.test)["accuracy"]
        plan = summary["plans"][0]
        print(json.dumps({"model": name, "target": t, "variant": label, "acc": round(acc, 4),
              "scope": (plan.get("scope") or {}), "comp": plan.get("compensated"),
              "macs_ratio": summary.get("after", {}).get("macs_ratio") if isinstance(summary.get("after"), dict) else None,
              "s": round(time.perf_counter() - s, 1)}, default=str), flush=True)
