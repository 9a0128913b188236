"""A self-contained HTML report: per-teacher summary charts, the teacher comparison, and per-rollout token views.

One file, no network: inline CSS, inline SVG charts drawn here, and a little inline JavaScript that colours each
diagnosed token by its alignment with the teacher picked in a selector (blue: aligned with the ideal gradient,
red: against it, grey outline: undefined) and shows the exact numbers in a tooltip. Any script error is written
into the page (`#errors`), so a headless browser test can see it.
"""

import html
import json
import math

from ..method.stats import Summary
from .aggregate import RunAggregate, confidence_label
from .compare import NOT_RESOLVED, Comparison
from .compare_table import comparison_legend, format_p_best, plain_answer, ranking_chain
from .records import to_node_records
from .summary import format_summary, legend


def _clean(value):
    """JSON has no NaN: undefined numbers become null (rendered as "undefined")."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _bar_chart(title: str, groups: list[str], series: dict[str, list[Summary]], width: int = 600) -> str:
    """Grouped bars with interval whiskers on [-1, 1]; `series[name][g]` is group `g`'s [`Summary`]."""
    height, pad, names, legend_w = 220, 40, list(series), 120
    colors = ["#3b6fb6", "#d9822b", "#5aa469", "#8e5ea2", "#c44e52", "#777777"]
    y = lambda v: pad + (1 - (max(min(v, 1.5), -1.5) + 1) / 2) * (height - 2 * pad)  # noqa: E731
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
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - pad + 16}" class="tick" text-anchor="middle">'
            f"{html.escape(group)}</text>"
        )
        for si, name in enumerate(names):
            s = series[name][gi]
            x = x0 + si * bar_w
            if s.n == 0 or math.isnan(s.mean):
                continue
            top, zero = y(max(s.mean, 0)), y(min(s.mean, 0))
            label = f"{name} / {group}: {format_summary(s)}"
            parts.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" height="{max(zero - top, 1):.1f}" '
                f'fill="{colors[si % len(colors)]}"><title>{html.escape(label)}</title></rect>'
            )
            if s.has_interval:  # no whisker at all rather than a zero-length one: "no interval" is not [x, x]
                cx = x + bar_w * 0.45
                parts.append(
                    f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(s.upper):.1f}" y2="{y(s.lower):.1f}" class="whisker"/>'
                )
    for si, name in enumerate(names):
        parts.append(
            f'<rect x="{right + 10}" y="{30 + 14 * si}" width="10" height="10" fill="{colors[si % len(colors)]}"/>'
        )
        parts.append(f'<text x="{right + 24}" y="{39 + 14 * si}" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _cell(s: Summary | None, extra: str = "") -> str:
    """The estimate and interval on one line, the counts below; the whole table cell text as its tooltip."""
    if s is None:
        return f"<td{extra}></td>"
    text = format_summary(s)
    head, _, counts = text.partition(" n=")
    return f'<td{extra} title="{html.escape(text)}">{html.escape(head)}<br><small>n={html.escape(counts)}</small></td>'


def _summary_table(run: RunAggregate) -> str:
    """Like the terminal table: a column per view, two lines per teacher (pooled, then mean of node cosines)."""
    first = html.escape(run.teachers[0].teacher) if run.teachers else ""
    head = (
        "<tr><th>teacher</th><th></th><th>all nodes (param)</th><th>incorrect rollouts</th><th>correct rollouts</th>"
        f"<th>logit space</th><th>vs {first} (paired)</th><th>share &gt; 0</th><th>teacher advantage</th></tr>"
    )
    out = [head]
    for t in run.teachers:
        name = html.escape(t.teacher)
        pooled = [t.pooled, t.pooled_incorrect, t.pooled_correct, t.pooled_logit, t.vs_first_pooled]
        mean = [t.overall, t.incorrect, t.correct, t.logit, t.vs_first]
        out.append(
            f'<tr data-teacher="{name}"><td rowspan="2">{name}</td><td>pooled</td>'
            + "".join(_cell(c) for c in pooled)
            + f'<td rowspan="2">{"-" if math.isnan(t.positive_frac) else f"{t.positive_frac:.2f}"}</td>{_cell(t.advantage, " rowspan=2")}</tr>'
        )
        out.append("<tr><td>mean</td>" + "".join(_cell(c) for c in mean) + "</tr>")
    return '<table id="summary">' + "\n".join(out) + "</table>"


def _question_table(run: RunAggregate) -> str:
    """Per question: the student's pass rate over its diagnosed rollouts, then each teacher's mean node cosine."""
    questions: dict = {}
    for t in run.teachers:
        for q in t.questions:
            questions.setdefault(q.question_id, {"q": q})[t.teacher] = q
    if not questions:
        return "<p>No per-question aggregates (no question ids in the records).</p>"
    head = "<tr><th>question</th><th>student pass rate</th>" + "".join(
        f"<th>{html.escape(t.teacher)}</th>" for t in run.teachers
    )
    out = [head + "</tr>"]
    for qid, by_teacher in questions.items():
        q = by_teacher["q"]
        row = f"<tr><td>{html.escape(str(qid))}</td><td>{q.pass_rate:.2f} ({q.correct}/{q.rollouts})</td>"
        for t in run.teachers:
            mine = by_teacher.get(t.teacher)
            row += _cell(mine.mean if mine else None)
        out.append(row + "</tr>")
    return '<table id="questions">' + "\n".join(out) + "</table>"


def _row(cells: list, tag: str = "td") -> str:
    """A table row of [`Summary`] cells ([`_cell`]) and plain values (escaped here)."""
    return (
        "<tr>"
        + "".join(_cell(c) if isinstance(c, Summary) else f"<{tag}>{html.escape(str(c))}</{tag}>" for c in cells)
        + "</tr>"
    )


def _table(table_id: str, head: list[str], rows: list[list]) -> str:
    return f'<table id="{table_id}">{_row(head, "th")}{"".join(_row(r) for r in rows)}</table>'


def _comparison_section(comp: Comparison | None) -> str:
    """The teacher comparison: the answer in words, the ranking with P(best), every pair, the slices."""
    if comp is None:
        return ""
    overall = comp.overall

    def more(p) -> str:
        if p.verdict != NOT_RESOLVED:
            return ""
        return "cannot be estimated" if p.more_rollouts is None else str(p.more_rollouts)

    ranking = _table(
        "ranking",
        ["rank", "teacher", "pooled alignment (param)", "P(best)"],
        [[i, r.teacher, r.pooled, format_p_best(r.p_best)] for i, r in enumerate(overall.ranking, 1)],
    )
    pairs = _table(
        "pairs",
        ["pair (higher - lower)", "difference on the same nodes", "verdict", "more diagnosed rollouts to resolve it"],
        [[f"{p.higher} - {p.lower}", p.difference, p.verdict, more(p)] for p in overall.pairs],
    )
    slices = _table(
        "slices",
        [
            "slice",
            "nodes",
            "rollouts",
            "clusters",
            "P(best) of the first",
            "ranking (> resolved, ~ no significant difference, ? no interval)",
        ],
        [
            [s.label, s.nodes, s.rollouts, s.clusters, format_p_best(s.ranking[0].p_best), ranking_chain(s)]
            for s in comp.slices
        ],
    )
    return (
        f'<h2>Comparison</h2>\n<p id="comparison-answer">{html.escape(plain_answer(comp))}</p>\n'
        f'{ranking}\n{pairs}\n{slices}\n<p class="legend">{html.escape(comparison_legend(comp))}</p>'
    )


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
      const n = rec.success_counts && rec.success_counts[i] !== undefined ? ' (n=' + rec.success_counts[i] + ')' : '';
      return t + ': S=' + (rec.success[i] === null ? '?' : rec.success[i].toFixed(2)) + n;
    }).join(', ');
    span.dataset.tip = teacher + '\nalignment (param) ' + fmt(rec.param_cos) + ' [' + fmt(rec.param_ci_low) + ', ' + fmt(rec.param_ci_high) + ']'
      + '\nalignment (logit) ' + fmt(rec.logit_cos) + ' [' + fmt(rec.logit_ci_low) + ', ' + fmt(rec.logit_ci_high) + ']'
      + '\nteacher advantage ' + fmt(rec.advantage) + '\nV(node) ' + fmt(rec.value)
      + (rec.undefined ? '\nundefined: ' + rec.undefined : '')
      + '\ncandidates (token id: success) ' + cands + '\n' + rec.rollouts_spent + ' targeted continuations decoded here'
      + (rec.screened_out ? ' (stopped after screening: all alike)' : '')
      + (rec.pool_weight !== undefined && rec.pool_weight !== 1 ? '\nweight in means and pooled sums: ' + rec.pool_weight : '');
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
td { white-space: nowrap; } small { color: #666; }
th { background: #f3f3f3; } .chart-title { font-size: 13px; font-weight: 600; } .tick { font-size: 11px; fill: #555; }
.grid { stroke: #e3e3e3; } .whisker { stroke: #222; stroke-width: 1.5; }
.rollout { border: 1px solid #ddd; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.prompt { color: #666; font-size: 13px; } .tokens { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
span.node { border-radius: 3px; cursor: help; padding: 1px 0; } span.node.undef { outline: 1px dashed #999; }
#tooltip { position: absolute; display: none; background: #fff; border: 1px solid #888; padding: 6px 8px;
  white-space: pre; font-size: 12px; box-shadow: 0 2px 6px rgba(0,0,0,.2); pointer-events: none; }
.ok { color: #2a7a2a; } .bad { color: #b33; } #errors { color: #b33; white-space: pre; }
"""


# The record fields the tooltip shows (NodeRecord names; the page's script reads them by the same names).
_TOOLTIP_FIELDS = (
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
    "success_counts",
    "rollouts_spent",
    "screened_out",
    "pool_weight",
)


def render_html(
    rows: list,
    rollouts: list[dict],
    run: RunAggregate,
    title: str = "gad report",
    comparison: Comparison | None = None,
) -> str:
    """
    The whole report as one HTML string.

    Args:
        rows (`list[dict]` or `list[NodeRecord]`): The node records the aggregate was computed from.
        rollouts (`list[dict]`): Rollout rows (tokens, verdicts) for the per-rollout views.
        run ([`RunAggregate`]): The aggregates ([`aggregate`]); every number in the summary, the charts and the
            per-question table is read from it.
        title (`str`, *optional*, defaults to `"gad report"`): Page title.
        comparison ([`Comparison`], *optional*): The teacher comparison ([`compare`]) of the same records, shown in
            a "Comparison" section after the summary; no such section when omitted.
    """
    records = to_node_records(rows)
    teachers = [t.teacher for t in run.teachers]
    nodes: dict[str, dict] = {}
    for r in records:
        key = f"{r.step}|{r.rollout_id}|{r.position}"
        nodes.setdefault(key, {})[r.teacher] = {k: _clean(getattr(r, k)) for k in _TOOLTIP_FIELDS}
    data = json.dumps({"teachers": teachers, "nodes": nodes}).replace("</", "<\\/")
    outcomes = ["incorrect", "correct", "all"]
    charts = _bar_chart(
        "pooled alignment by rollout outcome",
        outcomes,
        {t.teacher: [t.pooled_incorrect, t.pooled_correct, t.pooled] for t in run.teachers},
    )
    charts += _bar_chart(
        "mean of node cosines by rollout outcome",
        outcomes,
        {t.teacher: [t.incorrect, t.correct, t.overall] for t in run.teachers},
    )
    charts += _bar_chart(
        "mean of node cosines by relative position",
        ["0-25%", "25-50%", "50-75%", "75-100%"],
        {t.teacher: list(t.positions.values()) for t in run.teachers},
    )
    views = []
    diagnosed = {r.node for r in records}
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
            f'<div class="rollout"><div class="prompt">step {ro["step"]} · rollout {html.escape(str(ro["rollout_id"]))}'
            f" · question {ro['question_id']} · {verdict} (reward {ro['reward']:.2f}) — "
            f"{html.escape(ro['prompt_text'])}</div>"
            f'<div class="tokens">{"".join(spans)}</div></div>'
        )
    options = "".join(f'<option value="{html.escape(t)}">{html.escape(t)}</option>' for t in teachers)
    level = confidence_label(run.confidence)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Gradient alignment between each teacher's distillation gradient and the ideal gradient estimated by targeted
rollouts, per node. Positive: the teacher pushes the student toward what raises its chance of success.</p>
<div id="errors"></div>
<h2>Summary</h2>
<p>{run.rollouts} rollouts diagnosed, {run.correct} correct; {run.nodes} nodes ({run.screened_out} stopped after
screening), {run.rollouts_spent} targeted continuations decoded. Intervals: {level} bootstrap over
{run.cluster_unit}s.</p>
{_summary_table(run)}
<p class="legend">{html.escape(legend(run))}</p>
{charts}
{_comparison_section(comparison)}
<h2>Per question</h2>
<p>Mean of node cosines (parameter space) per question; the pass rate is over the question's diagnosed rollouts,
and intervals ({level}) resample those rollouts.</p>
{_question_table(run)}
<h2>Rollouts</h2>
<p>Teacher: <select id="teacher">{options}</select> — hover a highlighted token for its numbers.</p>
{"".join(views)}
<div id="tooltip"></div>
<script type="application/json" id="gad-data">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
