"""Is the first token of an assistant turn fixed by the template? Cosine between the last hidden
states (raw and centred by the mean state) of same-id tokens at: the example's first content
token; the first token of the assistant turn; any other content token (baseline)."""
import collections, itertools, tempfile, torch, statistics
from trim_fast import Selector
from trim_fast.demo import hard
from trim_fast.data import open_records, tokenize_example
import trim_fast.data.render as render
render.LEAD_TOKENS = 0
sel = Selector(None)
tok, model = sel.tokenizer, sel.model
d = tempfile.mkdtemp(); man = hard.generate(d, per_family=12, targets_per_family=1, seed=0)
exs = list(open_records(man["pool"]))[:48]
hdr = tuple(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
groups = collections.defaultdict(list)  # (kind, id) -> states
allstates = []
base = model.model if hasattr(model, "model") else model
with torch.inference_mode():
    for ex in exs:
        t = tokenize_example(tok, ex)
        ids = torch.tensor([t.ids])
        h = base(input_ids=ids).last_hidden_state[0].float()
        counted = [i for i, c in enumerate(t.counted) if c]
        allstates.append(h[counted])
        first = counted[0]
        a = next(i + len(hdr) for i in range(len(t.ids)) if tuple(t.ids[i:i + len(hdr)]) == hdr)
        groups[("first content", t.ids[first])].append(h[first])
        groups[("first assistant", t.ids[a])].append(h[a])
        for i in counted[1:]:
            if i != a and i != a + 1:
                groups[("other", t.ids[i])].append(h[i])
        groups[("second assistant", t.ids[a + 1])].append(h[a + 1])
mu = torch.cat(allstates).mean(0)
for kind in ("first content", "first assistant", "second assistant", "other"):
    raw, cen = [], []
    for (k, tid), hs in groups.items():
        if k != kind or len(hs) < 2:
            continue
        for x, y in itertools.combinations(hs[:12], 2):
            raw.append(torch.cosine_similarity(x, y, 0).item())
            cen.append(torch.cosine_similarity(x - mu, y - mu, 0).item())
    print(f"{kind:18s} pairs {len(raw):5d}  raw cos mean {statistics.fmean(raw):.4f} min {min(raw):.4f}  centred mean {statistics.fmean(cen):.4f} min {min(cen):.4f}")
