"""A self-contained HTML report: per-teacher summary charts and per-rollout token views.

One file, no network: inline CSS, inline SVG charts drawn here, and a little inline JavaScript that colours each
diagnosed token by its alignment with the teacher picked in a selector (blue: aligned with the ideal gradient,
red: against it, grey outline: undefined) and shows the exact numbers in a tooltip. Any script error is written
into the page (`#errors`), so a headless browser test can see it.
"""

import html
import json
import math

from .summary import TeacherSummary


def _clean(value):
    """JSON has no NaN: undefined numbers become null (rendered as "undefined")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _bar_chart(title: str, groups: list[str], series: dict[str, list], width: int = 600) -> str:
    """Grouped bars with interval whiskers on [-1, 1]; `series[name][g] = (mean, low, high, n)`."""
    height, pad, names, legend_w = 220, 40, list(series), 120
    colors = ["#3b6fb6", "#d9822b", "#5aa469", "#8e5ea2", "#c44e52", "#777777"]
    y = lambda v: pad + (1 - (v + 1) / 2) * (height - 2 * pad)  # noqa: E731
    right = width - legend_w  # the plot ends here; the legend sits to its right, clear of the bars
    group_w = (right - pad) / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(names), 1)
    parts = [f'<svg width="{width}" height="{height + 20}" role="img" aria-label="{html.escape(title)}">']
    parts.append(f'<text x="{pad}" y="16" class="chart-title">{html.escape(title)}</text>')
    for tick in (-1, -0.5, 0, 0.5, 1):
        parts.append(f'<line x1="{pad}" x2="{right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>')
        parts.append(f'<text x="{pad - 6}" y="{y(tick) + 4:.1f}" class="tick" text-anchor="end">{tick:+.1f}</text>')
    for gi, group in enumerate(groups):
        x0 = pad + gi * group_w + group_w * 0.1
        parts.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - pad + 16}" class="tick" text-anchor="middle">{html.escape(group)}</text>'
        )
        for si, name in enumerate(names):
            mean, low, high, n = series[name][gi]
            x = x0 + si * bar_w
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                continue
            top, zero = y(max(mean, 0)), y(min(mean, 0))
            label = (
                f"{name} / {group}: {mean:+.3f} [{low:+.3f}, {high:+.3f}] n={n}"
                if low == low
                else f"{name} / {group}: {mean:+.3f} n={n}"
            )
            parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" height="{max(zero - top, 1):.1f}" '
                f'fill="{colors[si % len(colors)]}"><title>{html.escape(label)}</title></rect>'
            )
            if low == low and high == high:
                cx = x + bar_w * 0.45
                parts.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(high):.1f}" y2="{y(low):.1f}" class="whisker"/>'
                )
    for si, name in enumerate(names):
        parts.append(
            f'<rect x="{right + 10}" y="{30 + 14 * si}" width="10" height="10" fill="{colors[si % len(colors)]}"/>'
        )
        parts.append(f'<text x="{right + 24}" y="{39 + 14 * si}" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _summary_rows(summaries: list[TeacherSummary]) -> str:
    def cell(s):
        if s.n == 0:
            return f"undefined (undef={s.n_undefined})"
        return f"{s.mean:+.3f} [{s.lower:+.3f}, {s.upper:+.3f}] n={s.n}" if s.n > 1 else f"{s.mean:+.3f} n=1"

    out = []
    for s in summaries:
        vs = "" if s.vs_first is None else cell(s.vs_first)
        out.append(
            f"<tr><td>{html.escape(s.teacher)}</td><td>{cell(s.overall)}</td><td>{cell(s.incorrect)}</td>"
            f"<td>{cell(s.correct)}</td><td>{cell(s.logit)}</td><td>{s.positive_frac:.2f}</td>"
            f"<td>{s.overall.n_undefined}</td><td>{s.advantage:+.3f}</td><td>{vs}</td></tr>"
        )
    return "\n".join(out)


def _position_series(rows, teachers, buckets):
    from ..method.stats import summarize

    series = {}
    for t in teachers:
        vals = []
        for lo, hi in buckets:
            part = [
                r["param_cos"]
                for r in rows
                if r["teacher"] == t and (lo <= r["rel_position"] < hi or (hi == 1.0 and r["rel_position"] == 1.0))
            ]
            s = summarize(part)
            vals.append((s.mean, s.lower, s.upper, s.n))
        series[t] = vals
    return series


_SCRIPT = r"""
window.onerror = function (msg, src, line) {
  document.getElementById('errors').textContent += 'Error: ' + msg + ' (line ' + line + ')\n';
};
const DATA = JSON.parse(document.getElementById('gad-data').textContent);
function colour(c) {
  if (c === null || c === undefined) return null;
  const a = Math.min(Math.abs(c), 1);
  return c >= 0 ? `rgba(59,111,182,${0.15 + 0.75 * a})` : `rgba(196,78,82,${0.15 + 0.75 * a})`;
}
function fmt(x) { return (x === null || x === undefined) ? 'undefined' : (x >= 0 ? '+' : '') + x.toFixed(3); }
function render() {
  const teacher = document.getElementById('teacher').value;
  document.querySelectorAll('span.node').forEach(function (span) {
    const rec = DATA.nodes[span.dataset.key] && DATA.nodes[span.dataset.key][teacher];
    span.classList.toggle('undef', !rec || rec.param_cos === null);
    const bg = rec ? colour(rec.param_cos) : null;
    span.style.background = bg || 'transparent';
    if (!rec) { span.dataset.tip = 'not diagnosed for ' + teacher; return; }
    const cands = rec.candidates.map(function (t, i) {
      return t + ': S=' + (rec.success[i] === null ? '?' : rec.success[i].toFixed(2));
    }).join(', ');
    span.dataset.tip = teacher + '\nalignment (param) ' + fmt(rec.param_cos) + ' [' + fmt(rec.param_ci_low) + ', ' + fmt(rec.param_ci_high) + ']'
      + '\nalignment (logit) ' + fmt(rec.logit_cos) + ' [' + fmt(rec.logit_ci_low) + ', ' + fmt(rec.logit_ci_high) + ']'
      + '\nteacher advantage ' + fmt(rec.advantage) + '\nV(node) ' + fmt(rec.value)
      + (rec.undefined ? '\nundefined: ' + rec.undefined : '')
      + '\ncandidates (token id: success) ' + cands + '\n' + rec.targeted_per_candidate + ' targeted rollouts per candidate';
  });
}
const tip = document.getElementById('tooltip');
document.addEventListener('mouseover', function (e) {
  if (e.target.classList && e.target.classList.contains('node')) {
    tip.textContent = e.target.dataset.tip || ''; tip.style.display = 'block';
    tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px';
  }
});
document.addEventListener('mouseout', function (e) {
  if (e.target.classList && e.target.classList.contains('node')) tip.style.display = 'none';
});
document.getElementById('teacher').addEventListener('change', render);
render();
document.body.dataset.rendered = 'yes';
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 12px 0; } td, th { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }
th { background: #f3f3f3; } .chart-title { font-size: 13px; font-weight: 600; } .tick { font-size: 11px; fill: #555; }
.grid { stroke: #e3e3e3; } .whisker { stroke: #222; stroke-width: 1.5; }
.rollout { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.prompt { color: #666; font-size: 13px; } .tokens { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
span.node { border-radius: 3px; cursor: help; padding: 1px 0; } span.node.undef { outline: 1px dashed #999; }
#tooltip { position: absolute; display: none; background: #fff; border: 1px solid #888; padding: 6px 8px;
  white-space: pre; font-size: 12px; box-shadow: 0 2px 6px rgba(0,0,0,.2); pointer-events: none; }
.ok { color: #2a7a2a; } .bad { color: #b33; } #errors { color: #b33; white-space: pre; }
"""


def render_html(
    rows: list[dict], rollouts: list[dict], summaries: list[TeacherSummary], title: str = "gad report"
) -> str:
    """The whole report as one HTML string."""
    teachers = [s.teacher for s in summaries]
    nodes: dict[str, dict] = {}
    keep = (
        "param_cos",
        "param_ci_low",
        "param_ci_high",
        "logit_cos",
        "logit_ci_low",
        "logit_ci_high",
        "advantage",
        "value",
        "undefined",
        "candidates",
        "success",
        "targeted_per_candidate",
    )
    for r in rows:
        key = f"{r['step']}|{r['rollout_id']}|{r['position']}"
        nodes.setdefault(key, {})[r["teacher"]] = {k: _clean(r[k]) for k in keep}
    data = json.dumps({"teachers": teachers, "nodes": nodes}).replace("</", "<\\/")
    correct_series = {
        s.teacher: [
            (s.incorrect.mean, s.incorrect.lower, s.incorrect.upper, s.incorrect.n),
            (s.correct.mean, s.correct.lower, s.correct.upper, s.correct.n),
            (s.overall.mean, s.overall.lower, s.overall.upper, s.overall.n),
        ]
        for s in summaries
    }
    buckets = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
    charts = _bar_chart("alignment by rollout outcome", ["incorrect", "correct", "all"], correct_series)
    charts += _bar_chart(
        "alignment by relative position",
        ["0-25%", "25-50%", "50-75%", "75-100%"],
        _position_series(rows, teachers, buckets),
    )
    views = []
    diagnosed = {(r["step"], r["rollout_id"], r["position"]) for r in rows}
    for ro in rollouts:
        spans = []
        for pos, tok in enumerate(ro["completion_tokens"]):
            text = html.escape(tok)
            if (ro["step"], ro["rollout_id"], pos) in diagnosed:
                spans.append(f'<span class="node" data-key="{ro["step"]}|{ro["rollout_id"]}|{pos}">{text}</span>')
            else:
                spans.append(text)
        verdict = '<span class="ok">correct</span>' if ro["correct"] else '<span class="bad">incorrect</span>'
        views.append(
            f'<div class="rollout"><div class="prompt">step {ro["step"]} · rollout {html.escape(str(ro["rollout_id"]))} · '
            f"question {ro['question_id']} · {verdict} (reward {ro['reward']:.2f}) — {html.escape(ro['prompt_text'])}</div>"
            f'<div class="tokens">{"".join(spans)}</div></div>'
        )
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in teachers)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Gradient alignment between each teacher's distillation gradient and the ideal gradient estimated by targeted
rollouts, per node. Positive: the teacher pushes the student toward what raises its chance of success.</p>
<div id="errors"></div>
<h2>Summary</h2>
<table><tr><th>teacher</th><th>alignment (param space)</th><th>incorrect rollouts</th><th>correct rollouts</th>
<th>logit space</th><th>share &gt; 0</th><th>undefined</th><th>teacher advantage</th><th>vs {html.escape(teachers[0]) if teachers else ""} (paired)</th></tr>
{_summary_rows(summaries)}
</table>
<p>Intervals: 95% bootstrap over rollouts; n: nodes where the cosine is defined.</p>
{charts}
<h2>Rollouts</h2>
<p>Teacher: <select id="teacher">{options}</select> — hover a highlighted token for its numbers.</p>
{"".join(views)}
<div id="tooltip"></div>
<script type="application/json" id="gad-data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
