"""Recipe cards: every setting of a registered framework against its authors' code.

A card is generated from the registered :class:`~pcpo.algorithms.Framework`
(its fields, ``per_family`` values and ``references``) and from the paper
configs it names (``config_references``), so it cannot drift from what runs:
``pcpo algorithms --show NAME`` prints it, ``pcpo algorithms --write-docs DIR``
writes the Markdown copies under ``docs/recipes/`` that a test compares with a
fresh render.

Each row has one of four statuses:

* ``matches``: our value is the reference's;
* ``deliberate``: differs on purpose (the reason is in the row);
* ``PCPO``: changed by the PCPO transform (``pcpo-X`` cards only);
* ``DIFFERS``: a difference nobody marked; the tests fail on any such row,
  and on any framework field of a cited baseline that has no reference entry.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from pcpo.algorithms import FAMILIES, Framework, Ref, get_algorithm

#: framework fields that are bookkeeping, not settings
META_FIELDS = ("name", "description", "base", "per_family", "references", "config_references", "samplers")

#: config keys computed from the config rather than read from it
DERIVED_KEYS = ("samples_per_epoch", "optimizer_steps_per_epoch", "samples_per_optimizer_step")

ROOT = Path(__file__).resolve().parent.parent


def same(a: Any, b: Any) -> bool:
    """Equality that treats 1e-4 and 0.0001, 5 and 5.0, tuples and lists alike."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@dataclasses.dataclass
class Row:
    setting: str
    ours: Any
    ref: Ref | None
    status: str

    @property
    def reference(self) -> Any:
        return None if self.ref is None else self.ref.value


def _status(ours: Any, ref: Ref | None, pcpo_changed: bool) -> str:
    if pcpo_changed:
        return "PCPO"
    if ref is None:
        return "not cited"
    if ref.value is None:
        return "no counterpart"
    if same(ours, ref.value):
        return "matches"
    return "deliberate" if ref.deliberate else "DIFFERS"


#: extension points whose default means "no such mechanism" (a plain SDE everywhere, no hook)
MECHANISM_FIELDS = {"objective_options": {}, "noise_schedule": "constant", "noise_schedule_options": {},
                    "rollout_hook": None, "rollout_hook_options": {}, "micro_batches": "samples"}


def framework_rows(fw: Framework, family: str, base: Framework | None = None) -> list[Row]:
    """One row per framework field for one model family (``base``: the framework a
    ``pcpo-`` variant was derived from, to mark what the transform changed)."""
    eff = fw.for_family(family)
    beff = base.for_family(family) if base is not None else None
    refs = fw.references
    rows = []
    for f in dataclasses.fields(Framework):
        if f.name in META_FIELDS:
            continue
        ours = getattr(eff, f.name)
        if f.name in MECHANISM_FIELDS and same(ours, MECHANISM_FIELDS[f.name]) and \
                f"{family}.{f.name}" not in refs and f.name not in refs:
            continue  # an extension point this framework does not use: nothing to cite
        ref = refs.get(f"{family}.{f.name}", refs.get(f.name))
        changed = beff is not None and not same(ours, getattr(beff, f.name))
        rows.append(Row(f.name, ours, ref, _status(ours, ref, changed)))
    fields = {f.name for f in dataclasses.fields(Framework)}
    for key, ref in refs.items():  # reference steps with no framework field
        bare = key.split(".", 1)[1] if key.split(".", 1)[0] in FAMILIES else key
        if bare in fields or bare == "sampler" or (key != bare and not key.startswith(family + ".")):
            continue
        rows.append(Row(bare, "not ported", ref, "deliberate" if ref.deliberate else "DIFFERS"))
    sampler = eff.samplers[family]
    sref = refs.get(f"{family}.sampler", refs.get("sampler"))
    rows.insert(0, Row("sampler", sampler, sref, _status(sampler, sref, False)))
    return rows


def config_value(path: str | Path, key: str) -> Any:
    """A setting of an experiment file as the trainer or workflow sees it: the file's
    value, else the trainer's default; ``DERIVED_KEYS`` come from the batch arithmetic
    on the file's training processes (``resources.train``: nodes x gpus)."""
    from pcpo.config import TrainingConfig, batch_arithmetic, from_dict
    from pcpo.launch import world_size

    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    raw = yaml.safe_load(p.read_text()) or {}
    if key in DERIVED_KEYS:
        cfg = from_dict(TrainingConfig, raw)
        return batch_arithmetic(cfg, world_size(raw.get("resources")), cfg.sampling.steps, 1)[key]
    found = _dotted(raw, key)
    if found is not _MISSING:
        return found
    found = _dotted(dataclasses.asdict(from_dict(TrainingConfig, raw)), key)
    return None if found is _MISSING else found


_MISSING = object()


def _dotted(node: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def config_rows(fw: Framework) -> dict[str, list[Row]]:
    out = {}
    for path, refs in fw.config_references.items():
        out[path] = [Row(k, config_value(path, k), r, _status(config_value(path, k), r, False)) for k, r in refs.items()]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}" if v else "{}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return "—" if v is None else str(v)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _table(rows: list[Row]) -> list[str]:
    lines = ["| setting | ours | reference | status | source / note |", "|---|---|---|---|---|"]
    for r in rows:
        src = "" if r.ref is None else r.ref.source + (f" — {r.ref.note}" if r.ref.note else "")
        lines.append(f"| `{r.setting}` | {_cell(_fmt(r.ours))} | {_cell(_fmt(r.reference))} | {r.status} | {_cell(src)} |")
    return lines


def render_card(name: str) -> str:
    """The Markdown recipe card of an algorithm name (``X``, ``pcpo-X``, ``pcpo-base-X``), or
    ``pcpo``: the transform against its authors' lineage."""
    if name == "pcpo":
        return render_pcpo_card()
    fw = get_algorithm(name)
    base = get_algorithm(fw.base) if fw.base else None
    lines = [f"# Recipe card: `{name}`", "", fw.description, "",
             "Generated from the registered framework by `pcpo algorithms --show " + name + "`; do not edit by hand.",
             "Status: *matches* the reference; *deliberate* difference (reason given); *PCPO* changed by the",
             "PCPO transform (docs/method.md §3); *no counterpart* in the reference code; *DIFFERS* or",
             "*not cited* would be a fidelity bug (the tests fail on both for the cited baselines).", ""]
    for fam in FAMILIES:
        if fam not in fw.samplers:
            continue
        what = {"ddim": "epsilon models (DDIM-SDE)", "flow": "velocity models (flow SDE)"}[fam]
        lines += [f"## Settings on {what}", ""]
        lines += _table(framework_rows(fw, fam, base))
        lines.append("")
    crow = config_rows(base or fw)
    if crow:
        lines += ["## Full-scale paper configs", "",
                  "Each setting as `pcpo train` runs it from the file (derived counts use `resources.train`: nodes x gpus",
                  "processes), against the reference run it reproduces.", ""]
        for path, rows in crow.items():
            lines += [f"### `{path}`", ""] + _table(rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def cited_baselines() -> list[str]:
    """Registered frameworks that carry references (their cards must be complete)."""
    from pcpo.algorithms import FRAMEWORKS, discover

    discover()
    return [n for n, fw in FRAMEWORKS.items() if fw.references]


def write_docs(folder: str | Path) -> list[Path]:
    """Write ``<folder>/<name>.md`` for every cited baseline and its ``pcpo-`` variant."""
    from pcpo.utils import atomic_write_text

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    from pcpo.algorithms import FRAMEWORKS, untransformable

    p = d / "pcpo.md"
    atomic_write_text(p, render_card("pcpo"))
    written.append(p)
    for n in cited_baselines():
        for name in (n, f"pcpo-{n}") if untransformable(FRAMEWORKS.get(n)) is None else (n,):
            p = d / f"{name}.md"
            atomic_write_text(p, render_card(name))
            written.append(p)
    return written


# ---------------------------------------------------------------------------
# The PCPO transform against its authors' lineage (`pcpo algorithms --show pcpo`)
# ---------------------------------------------------------------------------

#: the readable code closest to PCPO's own: the same authors' later repository, whose
#: sd15_zeroth_order/ README says it "is adapted from the PCPO codebase" (jaylee2000/pcpo
#: itself cannot be read); pinned to the commit every row cites
LINEAGE_REPO = "jaylee2000/rsm"
LINEAGE_COMMIT = "e8be3df6a5f86a57981b64130c9a5c1cdeef9071"
_L = f"{LINEAGE_REPO}@{LINEAGE_COMMIT[:7]}"
_GRPO = f"{_L} sd15_zeroth_order/train_grpo.py"
_DDIM = f"{_L} sd15_zeroth_order/diffusion/ddim_step.py"
_YAML = f"{_L} sd15_zeroth_order/configs/train/hpsv2_1_lora_grpo.yaml"
_SHARED = f"{_L} sd35_zeroth_order/flow_grpo/sd3_train_shared.py"
_SD3 = f"{_L} sd35_zeroth_order/scripts/train_sd3.py"
_MATRIX = f"{_L} sd35_zeroth_order/config/sd3_matrix.py"

LINEAGE_NOTE = (
    "The PCPO authors' repository (jaylee2000/pcpo) cannot be read here. Their later repository "
    f"{LINEAGE_REPO} (pinned at {LINEAGE_COMMIT}) says in sd15_zeroth_order/README.md:3 that its "
    "SD1.5 part \"is adapted from the PCPO codebase\"; its sd35_zeroth_order/ part carries PCPO's flow "
    "reweighting for Flow-GRPO on SD3.5-M (`reweight_type: pcpo_reweight`). It is the closest readable "
    "code by the same authors, so it stands in for the unreadable repository: every row below cites its "
    "file and line. Where the lineage has no counterpart (FLUX, DanceGRPO's flow sampler, the tiny world) "
    "the row says so and why our choice is what it is.")

#: the paper config of the lineage's own SD1.5 run
SD15_PAPER = "config/paper/pcpo_sd15_hpsv21.yaml"


def _pcpo_values() -> dict:
    """Our side of every row, computed from the code that runs (never a literal)."""
    from pcpo.algorithms import get_algorithm
    from pcpo.cli import run_credit_plan
    from pcpo.config import PcpoConfig, SamplingConfig, load_config
    from pcpo.credit import apply_variant, plan_credit, resolve_w_star, sd15_schedule, trained_pool

    v: dict = {}
    fw = get_algorithm("pcpo-dancegrpo")
    v["objective"], v["objective_form"], v["clip_range"] = fw.objective, fw.objective_form, fw.clip_range
    v["adv_clip"] = fw.adv_clip
    v["reduction"] = SamplingConfig().reduction
    spec = sd15_schedule()
    pc = PcpoConfig()
    plan = plan_credit(spec, "ddim", 50, eta=1.0, proportional=True, w_star=pc.w_star, sigma_root=pc.sigma_root)
    const = bool((plan.train_weight == plan.train_weight[0]).all())
    v["ddim.weights"] = "constant w_bar = mean native weight" if const and \
        abs(float(plan.train_weight[0]) - float(plan.native.mean())) < 1e-15 else "other"
    v["ddim.w_bar"] = float(plan.native.mean())
    half_native = plan_credit(spec, "ddim", 50, eta=0.5).native
    v["ddim.w_bar_eta"] = f"mean native weight of the run's grid ({float(half_native.mean()):.4f} at eta 0.5)"
    v["ddim.w_star"] = resolve_w_star(pc.w_star, plan.native_grid.alpha_prod, plan.native_grid.alpha_prod_next)
    v["ddim.sigma_root"] = "larger" if pc.sigma_root == "paper" else "smaller"
    half = plan_credit(spec, "ddim", 50, eta=0.5, proportional=True, w_star=pc.w_star, sigma_root=pc.sigma_root)
    scaled = torch_allclose(half.sample_grid.std, 0.5 * plan.sample_grid.std)
    v["ddim.eta_scaling"] = "sigma~ * eta" if scaled else "sigma~ (eta ignored)"
    v["ddim.final_alpha"] = "alphas_cumprod[0]" if spec.final_alpha_cumprod == float(spec.alphas_cumprod[0]) else \
        "other"
    fwd = fw.for_family("ddim")
    pool = trained_pool(fwd.step_selection, 50, fwd.timestep_fraction)
    v["ddim.trained_steps"] = f"{pool.numel()} of 50, {fwd.step_selection}"
    fwf = get_algorithm("pcpo-flow_grpo").for_family("flow")
    pool = trained_pool(fwf.step_selection, 10, fwf.timestep_fraction)
    v["flow.trained_steps"] = f"{pool.numel()} of 10, {fwf.step_selection}"
    cfg = load_config(ROOT / "config/paper/flowgrpo_sd35m_pickscore.yaml")
    _, fplan, _ = run_credit_plan(cfg, "pcpo-flow_grpo")
    v["flow.zeta"] = fplan.zeta
    g = fplan.sample_grid
    ds = g.timesteps - g.next_timesteps
    v["flow.weight"] = "zeta * ds of the sampling grid" if torch_allclose(fplan.train_weight, fplan.zeta * ds) else "other"
    v["flow.ratio"] = "log rho * zeta ds / w(s)" if torch_allclose(fplan.ratio_scale, fplan.zeta * ds / fplan.native) \
        else "other"
    fcfg = load_config(ROOT / "config/paper/dancegrpo_flux_hpsv21.yaml")
    _, xplan, _ = run_credit_plan(fcfg, "pcpo-dancegrpo")
    v["flow.zeta_flux"] = xplan.zeta
    v["flow.zeta_default"] = pc.zeta
    lam = plan_credit(spec, "ddim", 50, eta=1.0, proportional=True, variant="uw-lambda")
    ok = torch_allclose(lam.mix * lam.native, lam.native.mean().expand(50)) and lam.sample_grid is lam.native_grid
    v["uw-lambda"] = "native sigma; lambda_t = w_bar sigma_t / C_t" if ok else "other"
    v["uw-lambda.w_bar"] = float(lam.native.mean())
    # `pcpo sample` of a uw-lambda run: the lineage's SD1.5 config, evaluated on a 20-step eta-0.5 grid
    from pcpo.credit import config_schedule, evaluation_mix_plan

    lcfg = load_config(ROOT / "config/paper/pcpo_sd15_hpsv21.yaml", {"pcpo": {"variant": "uw-lambda"}})
    lspec, _ = config_schedule(lcfg)
    _, lplan, _ = run_credit_plan(lcfg, "pcpo-dancegrpo")
    ev = evaluation_mix_plan(lcfg, "pcpo-dancegrpo", lspec, "ddim", 20, 0.5, 0.0)
    ok = ev is not None and ev.sample_grid.num_steps == 20 and \
        torch_allclose(ev.mix * ev.native, lplan.native.mean().expand(20))
    v["uw-lambda.eval"] = ("interpolated policy; lambda_t = w_bar (training grid) sigma_t / C_t on the evaluation "
                           "grid" if ok else "other")
    lr = apply_variant(fw, "logrho")
    v["logrho"] = f"{lr.objective}, {lr.objective_form} form, {'proportional' if lr.proportional else 'native'} credit"
    vw = get_algorithm("pcpo-base-dancegrpo")
    v["vw"] = f"{vw.objective}, {vw.objective_form} form, {'proportional' if vw.proportional else 'native'} credit"
    v["advantage_options"] = dict(fw.advantage_options)
    return v


def torch_allclose(a, b) -> bool:
    import torch

    return bool(torch.allclose(a.double(), b.double(), rtol=1e-12, atol=0.0))


#: the lineage's value of each row and where it is (file:line at LINEAGE_COMMIT)
PCPO_REFERENCES = {
    "objective": Ref("log_hinge", _GRPO + ":1109-1114: `torch.mean(torch.maximum(torch.zeros_like(advantages), "
                     "args.train_clip_range * torch.abs(advantages) + advantages * noise_matching_term))`; flow: "
                     + _SD3 + ":1081-1086"),
    "objective_form": Ref("matching", _GRPO + ":1093-1102: `noise_diff = noise_pred - sample['noise_preds'][:, j]`, "
                          "`term1 = 0.5 * (weight_t * noise_diff / s).pow(2).mean`, `term2 = ((weight_t * noise_diff) * "
                          "noise / s).mean`, `bad`: term1 + term2 = -log rho; flow: " + _SD3 + ":1068-1079"),
    "clip_range": Ref(1e-4, _YAML + ":29: `train_clip_range: !!float 1e-4`"),
    "reduction": Ref("mean", _GRPO + ":1096-1098: `.mean(dim=[1, 2, 3])` over the latent; ddim_step.py:222 "
                     "`log_prob.mean(dim=...)`"),
    "adv_clip": Ref(5.0, _YAML + ":54: `train_adv_clip_max: 5.0`; " + _GRPO + ":1046-1050 `torch.clamp(...)`"),
    "ddim.weights": Ref("constant w_bar = mean native weight", _GRPO + ":95-103 get_step_weight(): "
                        "`torch.full(..., args.const_weight)`, divided by `args.weight_scale_factor` in :1097-1098"),
    "ddim.w_bar": Ref(4.5 / 8.70575076181, _YAML + ":26,30: `const_weight: 4.5`, `weight_scale_factor: "
                      "8.70575076181` (w_bar = 4.5 / 8.70575... = 0.51689970493)",
                      note="ours is the mean native weight of the run's own grid, computed in float64: 0.5169002 "
                      "from the float64 SD1.5 schedule shown here, 0.51689967 from the float32 alphas_cumprod a run "
                      "loads from the hub scheduler; the authors' 0.51689970 is the same mean to 1e-6 relative",
                      deliberate=True),
    "ddim.w_bar_eta": Ref("4.5 / 8.70575076181 at every eta", _YAML + ":26,30 constants; " + _GRPO + ":1039-1044, "
                          "1097-1098 use them whatever `sample_eta` is",
                          note="ours follows the run's eta (the mean native weight of its grid), so the total credit "
                          "stays the native total at any eta; at eta 1 the two agree (row above)", deliberate=True),
    "ddim.w_star": Ref(4.5, _YAML + ":26: `const_weight: 4.5 # ... 4.5 (uw-sigma)`; `pcpo.w_star: auto` gives 4.5 "
                       "on SD1.5 at 50 steps"),
    "ddim.sigma_root": Ref("larger", _DDIM + ":48: `sigma = (weight * c1_t_squared ** 0.5 + (beta_prod_t_prev * "
                           "(weight ** 2 + 1) - c1_t_squared) ** 0.5) / (weight ** 2 + 1)` (our `sigma_root: paper`)"),
    "ddim.eta_scaling": Ref("sigma~ * eta", _DDIM + ":144-150: `std_dev_t = _get_std(...) * eta`"),
    "ddim.final_alpha": Ref("alphas_cumprod[0]", _DDIM + ":113-123: `prev_timestep = torch.clamp(prev_timestep, 0, "
                            "...)` makes the last step's alpha_prev alphas_cumprod[0]",
                            note="the same as SD1.5's set_alpha_to_one=False final_alpha_cumprod, which we use"),
    "ddim.trained_steps": Ref("49 of 50, random_but_last", _GRPO + ":368 `num_train_timesteps = int((sample_num_steps "
                              "- 1) * train_timestep_fraction)`, :799 `timesteps[:, :-1]` (:784 for ddpo/logrho), :890-896 a `randperm` per "
                              "sample",
                              note="as pcpo-dancegrpo; pcpo-ddpo keeps DDPO's own rule (all 50, random), the "
                              "transform changes only objective and credit"),
    "flow.trained_steps": Ref("9 of 10, first", _SD3 + ":414 `int(config.sample.num_steps * "
                              "config.train.timestep_fraction)`, :958 `range(num_train_timesteps)`; " + _MATRIX +
                              ":135,158 `num_steps = 10`, `timestep_fraction = 0.99`"),
    "flow.zeta": Ref(4.3152134639895925, _SHARED + ":7 `ZETA = 4.3152134639895925`; Flow-GRPO on SD3.5-M (" +
                     _MATRIX + ":120); `pcpo.zeta: auto` = authors here",
                     note="its origin is not in the code: the native weights of the SD3.5-M pipeline grid sum to "
                     "5.7054 over all 10 steps and 3.9348 over the 9 trained (4.2968 on a uniform grid)"),
    "flow.weight": Ref("zeta * ds of the sampling grid", _SHARED + ":65-66 `ZETA * delta_t`; " + _SD3 +
                       ":968-970 `delta_t = (timestep - next_timestep) / 1000.0` of the sampled timesteps",
                       note="on the trained steps only: their sum is zeta (1 - s_9) = 0.991 zeta on SD3.5-M, "
                       "the same here"),
    "flow.ratio": Ref("log rho * zeta ds / w(s)", _SHARED + ":88-92 `reweight_factor = weight_pcpo / weight_base`, "
                      "`torch.exp((log_prob - old_log_prob) * reweight_factor)`, weight_base :52-62 = "
                      "`sqrt(delta_t) / tilde_sigma * (1 + (1 - t) / (2 t) * tilde_sigma ** 2)`"),
    "flow.zeta_flux": Ref(None, "no counterpart: the lineage has no FLUX or DanceGRPO-flow code",
                          note="`pcpo.zeta: auto` = grid_trained there: the paper's zeta = sum_i w(s_i) taken over "
                          "the steps the objective trains (DanceGRPO never trains the last step, whose native "
                          "credit the native objective never applies); on FLUX's shift-3 12-step grid the trained "
                          "steps span 0.786 of the time, so the trained PCPO credit is 7.61 against 9.69 native "
                          "(grid_all: 9.02); `pcpo.zeta: grid_all` or a number is one setting away"),
    "flow.zeta_default": Ref(None, "no counterpart for the tiny world or other flow runs",
                             note="auto: the authors' value where they have one (Flow-GRPO on sd3), else "
                             "grid_trained, for the reason in the row above; on SD3.5-M grid_trained would give 3.9348, "
                             "the closest of the two grid sums to the authors' 4.3152 (grid_all 5.7054)"),
    "uw-lambda": Ref("native sigma; lambda_t = w_bar sigma_t / C_t", _DDIM + ":151-171: native `std_dev_t = eta * "
                     "variance ** 0.5`, `lambda_t = const_weight * std_dev_t / (c1_t - c2_t)`, `model_output_mine = "
                     "model_output_ref + lambda_t * (model_output - model_output_ref)`; the reference forward per "
                     "step: reverse_pipeline.py:150-167",
                     note="`pcpo.variant: uw-lambda`; the rollout and training forwards both see the interpolated "
                     "prediction (the reference from the trainer's KL-reference path), so its native-weight "
                     "log-ratio is the authors' w_bar-weighted matching term on the raw difference "
                     "(w(t) lambda_t = w_bar; " + _YAML + ":30 `weight_scale_factor: 1.0` for uw-lambda)"),
    "uw-lambda.w_bar": Ref(0.5168997049331665, _YAML + ":26: `const_weight: ... 0.5168997049331665 (uw-lambda)`",
                           note="ours from the grid in float64 (0.5169002), as the ddim.w_bar row", deliberate=True),
    "uw-lambda.eval": Ref("interpolated policy; lambda_t = w_bar (training grid) sigma_t / C_t on the evaluation grid",
                          _GRPO + ":192, 226-244: the evaluation calls `pipeline_with_logprob(..., "
                          "num_inference_steps=eval_num_steps, eta=args.sample_eta, unet_ref=unet_ref, "
                          "const_weight=args.const_weight, algorithm=args.algorithm, eval=True)`; reverse_pipeline.py:150 "
                          "`if unet_ref is not None and ('lambda' in algorithm or eval)` (the reference pass); "
                          + _DDIM + ":159-171 (std and lambda_t of that grid)",
                          note="`pcpo sample --checkpoint` of a uw-lambda run (pcpo.credit.evaluation_mix_plan, "
                          "policy_mix, shared with the trainer); the reference is the base model (LoRA adapters "
                          "disabled, or the base weights); a deterministic sample (lambda_t = 0: the base model) is "
                          "refused; the manifest records lambda_t under `policy`"),
    "logrho": Ref("ppo_clip_logrho, ratio form, native credit", _GRPO + ":1069-1078: `unclipped_loss = -advantages "
                  "* (1 + log_rho)`, `clipped_loss = -advantages * torch.clamp(1 + log_rho, 1 - xi, 1 + xi)`; "
                  "log_rho from ddim_step() with native sigma (" + _DDIM + ":151-159)",
                  note="`pcpo.variant: logrho`"),
    "vw": Ref("log_hinge, matching form, native credit", _YAML + ":25 `algorithm: ... \"vw\"` with `const_weight: "
              "null`: " + _GRPO + ":65-92 compute_inference_weights() (C/sigma per step)",
              note="our pcpo-base-X"),
    "advantage_options": Ref({"eps": 1e-8, "unbiased": False}, _GRPO + ":866-871: `group_std = "
                             "group_rewards.std(unbiased=False) + 1e-8`",
                             note="pcpo-dancegrpo keeps DanceGRPO's unbiased std (the transform changes objective "
                             "and credit only); the SD1.5 lineage config sets `unbiased: false`", deliberate=True),
}

#: row labels (setting column) of the pcpo card, in order
PCPO_SETTINGS = {
    "objective": "objective", "objective_form": "log-ratio form", "clip_range": "xi (clip range)",
    "reduction": "reduction over the latent", "adv_clip": "advantage clip",
    "ddim.weights": "DDIM: trained weights", "ddim.w_bar": "DDIM: w_bar", "ddim.w_bar_eta": "DDIM: w_bar at eta != 1", "ddim.w_star": "DDIM: w*",
    "ddim.sigma_root": "DDIM: sigma~ root", "ddim.eta_scaling": "DDIM: eta scaling of sigma~",
    "ddim.final_alpha": "DDIM: last step's alpha_prev", "ddim.trained_steps": "DDIM: trained steps (pcpo-dancegrpo)",
    "flow.trained_steps": "flow: trained steps (pcpo-flow_grpo)", "flow.zeta": "flow: zeta, Flow-GRPO on SD3.5-M",
    "flow.weight": "flow: trained weight", "flow.ratio": "flow: ratio form",
    "flow.zeta_flux": "flow: zeta, DanceGRPO on FLUX", "flow.zeta_default": "flow: pcpo.zeta default",
    "uw-lambda": "ablation uw-lambda", "uw-lambda.w_bar": "ablation uw-lambda: w_bar",
    "uw-lambda.eval": "ablation uw-lambda: evaluation sampling",
    "logrho": "ablation logrho", "vw": "ablation vw (pcpo-base-X)",
    "advantage_options": "advantages (pcpo-dancegrpo)",
}


def pcpo_rows() -> list[Row]:
    vals = _pcpo_values()
    return [Row(PCPO_SETTINGS[k], vals[k], ref, _status(vals[k], ref, False)) for k, ref in PCPO_REFERENCES.items()]


def _sd15_fw_value(key: str):
    from pcpo.config import load_config
    from pcpo.trainer import resolve_framework

    cfg = load_config(ROOT / SD15_PAPER)
    fw = resolve_framework(cfg, "pcpo-dancegrpo", "ddim")
    return getattr(fw, key.split(".", 1)[1])


#: the lineage's SD1.5 run (hpsv2_1_lora_grpo.yaml, run by train_grpo.py) against SD15_PAPER
SD15_REFERENCES = {
    "model.kind": Ref("sd1", _YAML + ":6 `pretrained_model: \"runwayml/stable-diffusion-v1-5\"` (a UNet, DDIM)"),
    "model.path": Ref("runwayml/stable-diffusion-v1-5", _YAML + ":6",
                      note="the same weights from stable-diffusion-v1-5/stable-diffusion-v1-5, the maintained copy of "
                      "the deleted runwayml repository (data catalogue entry sd15)", deliberate=True),
    "model.dtype": Ref("float16", _YAML + ":70 `mixed_precision: \"fp16\"`",
                       note="fp16 weights with fp32 LoRA, as train_grpo.py:449-479; old log-probs recomputed in "
                       "the training layout (train.old_logprobs: auto)"),
    "model.options.resolution": Ref(512, _GRPO + ":698-702 latents `(1, 4, 64, 64)` (64 x 8 px)"),
    "model.options.lora_targets": Ref(["to_k", "to_q", "to_v", "to_out.0"], _GRPO + ":464 `target_modules=[\"to_k\", "
                                      "\"to_q\", \"to_v\", \"to_out.0\"]`"),
    "lora.enabled": Ref(True, _YAML + ":12 `use_lora: true`"),
    "lora.rank": Ref(16, _YAML + ":58 `rank: 16`"),
    "lora.alpha": Ref(16, _GRPO + ":461-462 `r=args.rank, lora_alpha=args.rank`"),
    "reward.name": Ref("hpsv21", _YAML + ":24 `reward_fn: hps_v2`; utils/rewards.py:50-74 loads "
                       "`HPS_v2.1_compressed.pt` on open_clip ViT-H-14"),
    "prompts.options.path": Ref("./prompts_dancegrpo.txt", _YAML + ":15 `prompt_file: \"./prompts_dancegrpo.txt\"`",
                                note="the same file (git blob b47234e475645222ca9a0bb7742ebf4d08123855 at the pinned "
                                "commit, byte-identical to XueZeyue/DanceGRPO@15cc71d assets/prompts.txt), fetched by "
                                "the data catalogue to data/prompts/hpdv2_train.txt (entry hpdv2-train-prompts)", deliberate=True),
    "resources.train.gpus": Ref(None, "no counterpart: `accelerate launch` without a process count "
                                "(sd15_zeroth_order/README.md:44); the yaml's batch is per process",
                                note="1 process here: 8 prompts x 16 images, as the yaml's per-process batch"),
    "train.prompts_per_epoch": Ref(8, _YAML + ":33 `num_prompts_per_epoch: 8`"),
    "train.group_size": Ref(16, _YAML + ":34 `num_generations_per_prompt: 16`"),
    "train.train_batch_size": Ref(4, _YAML + ":35 `train_batch_size: 4`"),
    "train.gradient_accumulation": Ref(16, _YAML + ":36 `train_gradient_accumulation_steps: 16`; " + _GRPO +
                                       ":380 accumulates over the 49 trained timesteps as well (as the trainer)"),
    "samples_per_epoch": Ref(128, _GRPO + ":351 `num_prompts_per_epoch * num_generations_per_prompt` = 8 x 16"),
    "optimizer_steps_per_epoch": Ref(2, _GRPO + ":653-655 'Model updates per epoch' = 128 // (4 x 16)"),
    "sampling.batch_size": Ref(8, _YAML + ":32 `sample_batch_size: 8`"),
    "sampling.steps": Ref(50, _YAML + ":45 `sample_num_steps: 50`"),
    "sampling.eta": Ref(1.0, _YAML + ":42 `sample_eta: 1.0`"),
    "sampling.guidance_scale": Ref(5.0, _YAML + ":43 `sample_cfg_scale: 5.0`"),
    "train.epochs": Ref(300, _YAML + ":39 `num_train_epochs: 300`"),
    "train.lr": Ref(3e-4, _YAML + ":38 `learning_rate: !!float 3e-4`"),
    "train.weight_decay": Ref(1e-4, _YAML + ":64 `adam_weight_decay: !!float 1e-4`"),
    "train.adam_betas": Ref([0.9, 0.999], _YAML + ":62-63"),
    "train.adam_eps": Ref(1e-8, _YAML + ":65 `adam_epsilon: !!float 1e-8`"),
    "train.max_grad_norm": Ref(1.0, _YAML + ":55 `train_max_grad_norm: 1.0`"),
    "train.adv_clip": Ref(5.0, _YAML + ":54 `train_adv_clip_max: 5.0`"),
    "train.clip_range": Ref(1e-4, _YAML + ":29 `train_clip_range: !!float 1e-4`"),
    "train.inner_epochs": Ref(1, _YAML + ":52 `train_num_inner_epochs: 1`"),
    "train.timestep_fraction": Ref(1.0, _YAML + ":48 `train_timestep_fraction: 1.0` of the first 49 steps"),
    "pcpo.variant": Ref("uw-sigma", _YAML + ":25 `algorithm: \"uw-sigma\"`"),
    "pcpo.w_star": Ref(4.5, _YAML + ":26 `const_weight: 4.5`"),
    "pcpo.sigma_root": Ref("paper", _DDIM + ":48, the larger root"),
    "algorithms.dancegrpo.advantage_options": Ref({"eps": 1e-8, "unbiased": False}, _GRPO + ":866-871 "
                                                  "`group_std = group_rewards.std(unbiased=False) + 1e-8`"),
    "fw.step_selection": Ref("random_but_last", _GRPO + ":799 `timesteps[:, :-1]`, :890-896 per-sample `randperm`"),
    "fw.cfg_grad": Ref("both", _YAML + ":53 `train_cfg: true`; " + _GRPO + ":988-999 one forward of [uncond, "
                       "cond], no detach"),
    "fw.prompt_draw": Ref("per_group", _GRPO + ":664-666 `expanded_prompts.extend([prompt] * "
                          "num_generations_per_prompt)`"),
    "fw.share_initial_noise": Ref(True, _GRPO + ":698-740: one latent for the first half of an epoch's sample "
                                  "batches, another for the second half",
                                  note="the lineage shares 2 latents among 4 groups each; here each group shares "
                                  "its own (what the group-relative advantage compares)"),
    "fw.advantage": Ref("group", _GRPO + ":861-871 per-prompt group mean and std"),
}


def sd15_rows() -> list[Row]:
    rows = []
    for k, ref in SD15_REFERENCES.items():
        ours = _sd15_fw_value(k) if k.startswith("fw.") else config_value(SD15_PAPER, k)
        rows.append(Row(k, ours, ref, _status(ours, ref, False)))
    return rows


def render_pcpo_card() -> str:
    lines = ["# Recipe card: `pcpo` (the transform against its authors' lineage)", "",
             "PCPO as a transform of every framework (`pcpo-X`), setting by setting against the authors' own "
             "code as far as it can be read.", "", LINEAGE_NOTE, "",
             "Generated by `pcpo algorithms --show pcpo`; do not edit by hand. Status: *matches* the lineage; "
             "*deliberate* difference (reason given); *no counterpart* in the lineage; *DIFFERS* would be a "
             "fidelity bug (the tests fail on it). Each `pcpo-X` card lists the framework fields.", "",
             "## The transform", ""]
    lines += _table(pcpo_rows())
    lines += ["", "## Full-scale paper config: the lineage's own SD1.5 run", "",
              f"### `{SD15_PAPER}`", "",
              "Each setting as `pcpo train` runs it (pcpo-dancegrpo; `fw.` rows are the resolved framework's), "
              f"against {_YAML} run by {_GRPO}.", ""]
    lines += _table(sd15_rows())
    return "\n".join(lines).rstrip() + "\n"
