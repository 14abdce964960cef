"""The report's HTML template (Jinja2, autoescaped) and its styles and script, inline so the page
is one file plus its images and opens offline."""

from __future__ import annotations

import json
from typing import Any

import jinja2
from markupsafe import Markup

from blindspot_assets.report.svg import fmt

_CSS = """
:root{--sup:#2b6cb0;--exa:#dd6b20;--ink:#1a202c;--mute:#4a5568;--line:#e2e8f0;--bg:#f7fafc}
*{box-sizing:border-box}
[id]{scroll-margin-top:40px}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
 margin:0;background:#fff}
header.top{background:var(--ink);color:#fff;padding:14px 28px}
header.top h1{margin:0;font-size:22px;font-weight:600}
header.top .sub{color:#cbd5e0;font-size:12px;margin-top:2px}
nav.toc{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);
 padding:6px 28px;font-size:13px}
nav.toc a{margin-right:14px;color:var(--sup);text-decoration:none}
main{padding:8px 28px 40px;max-width:1400px}
h2{border-bottom:2px solid var(--line);padding-bottom:4px;margin-top:34px}
h3{margin:22px 0 8px}
.note{color:var(--mute);font-size:12px}
.warn{background:#fffaf0;border-left:4px solid var(--exa);padding:6px 10px;margin:8px 0}
.ok{background:#f3faf4;border-left:4px solid #2e8b57;padding:6px 10px;margin:8px 0}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.fig{border:1px solid var(--line);border-radius:6px;padding:6px;background:#fff}
.fig .cap{font-size:12px;color:var(--mute);max-width:420px;margin:2px 4px}
table.data{border-collapse:collapse;font-size:12.5px;margin:6px 0}
table.data th,table.data td{border-bottom:1px solid var(--line);padding:3px 8px;text-align:right;
 white-space:nowrap}
table.data th{background:var(--bg);position:sticky;top:30px;cursor:pointer;user-select:none}
table.data td.t,table.data th.t{text-align:left;white-space:normal}
table.kv{width:100%;margin:0}
table.kv td{text-align:left;vertical-align:top;white-space:normal;padding:2px 6px;
 overflow-wrap:anywhere}
table.kv td.k{color:var(--mute);width:34%;min-width:120px;overflow-wrap:normal}
table.kv table.kv td{border-bottom:1px dotted var(--line)}
.lgrid{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:0 28px;
 align-items:start}
.badge{display:inline-block;border-radius:9px;padding:0 7px;font-size:11px;color:#fff}
.badge.suppressed{background:var(--sup)}.badge.exaggerated{background:var(--exa)}
.badge.sig{background:#2f855a}.badge.paper{background:#718096}
.specific-view{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.badge.confirmed{background:#276749}.badge.not_confirmed{background:#c53030}
.badge.inconclusive,.badge.skipped{background:#a0aec0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fff}
.card.suppressed{border-top:4px solid var(--sup)}.card.exaggerated{border-top:4px solid var(--exa)}
.card h4{margin:0 0 4px;font-size:15px}
.card .name{color:var(--mute);font-weight:normal}
.card .nums{font-size:12px;color:var(--ink);margin-bottom:6px}
.card .nums span{margin-right:12px;white-space:nowrap}
.gallery{display:flex;flex-wrap:wrap;gap:8px}
.pair{display:flex;flex-direction:column;align-items:center;width:calc(2*var(--px) + 10px)}
.pair .imgs{display:flex;gap:4px}
figure.tile{margin:0;text-align:center;font-size:10.5px;color:var(--mute)}
figure.tile img{display:block;border-radius:3px;background:var(--bg)}
.missing-img{display:flex;align-items:center;justify-content:center;background:var(--bg);
 color:var(--mute);font-size:11px;border-radius:3px}
.pair .caption{font-size:11px;color:var(--mute);text-align:center;margin-top:2px;
 overflow:hidden;display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical}
.dps{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.dp{border:1px solid var(--line);border-radius:8px;padding:8px;display:flex;gap:10px}
.chips{display:flex;flex-wrap:wrap;gap:3px;margin:2px 0 4px}
.chip{border-radius:8px;padding:0 6px;font-size:11px;border:1px solid var(--line)}
.chip.sup{background:#ebf4ff;border-color:#bee3f8}.chip.exa{background:#fffaf0;border-color:#fbd38d}
.scroll{overflow-x:auto;max-width:100%}
table.data td.s{text-align:left}
.concepts-list{font-size:12px}
details>summary{cursor:pointer;color:var(--sup)}
pre.json{background:var(--bg);padding:8px;font-size:11px;max-height:360px;overflow:auto}
input.filter{margin:4px 0;padding:3px 6px;width:260px}
"""

# Sorting by column (click a header) and a text filter for the flagged-concept tables.
_JS = """
(function(){
  function cellValue(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''&&!isNaN(+v))
    {return +v;}return td.textContent.trim().toLowerCase();}
  document.querySelectorAll('table.sortable').forEach(function(table){
    table.querySelectorAll('th').forEach(function(th,col){
      th.addEventListener('click',function(){
        var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
        var asc=th.getAttribute('data-dir')!=='asc';th.setAttribute('data-dir',asc?'asc':'desc');
        rows.sort(function(a,b){var x=cellValue(a.cells[col]),y=cellValue(b.cells[col]);
          if(x===y){return 0;}return (x<y?-1:1)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
  document.querySelectorAll('input.filter').forEach(function(input){
    var table=document.getElementById(input.getAttribute('data-table'));
    input.addEventListener('input',function(){var q=input.value.toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows,function(r){
        r.style.display=r.textContent.toLowerCase().indexOf(q)>=0?'':'none';});});
  });
})();
"""

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }}</title>
<style>{{ css }} :root{--px:{{ px }}px}</style>
</head><body>{% set sp = cfg.stats.params %}
<header class="top"><h1>{{ title }}</h1>
<div class="sub">generated {{ generated_at }} · run config <code>{{ cfg.name }}</code> ·
{{ sections|length }} model{{ '' if sections|length == 1 else 's' }} ·
T = {{ sp.temperature }}, suppressed δ &lt; {{ sp.suppressed_below }},
exaggerated δ &gt; {{ sp.exaggerated_above }}, α = {{ sp.alpha }}</div></header>
<nav class="toc"><a href="#overview">Overview</a>
{%- for s in sections %}<a href="#model-{{ s.key }}">{{ s.key }}</a>{% endfor -%}
{%- for a in analyses %}<a href="#{{ a.id }}">{{ a.title }}</a>{% endfor -%}
<a href="#lineage">Lineage</a>
{%- if other_tables %}<a href="#tables">More tables</a>{% endif %}</nav>
<main>
{% macro num(v) %}{{ fmt(v) }}{% endmacro %}
{% macro ci(pair) %}{% if pair %}[{{ fmt(pair[0]) }}, {{ fmt(pair[1]) }}]{% endif %}{% endmacro %}
{% macro tile(t, w) -%}
<figure class="tile">{% if t.src %}<img src="{{ t.src }}" width="{{ w }}" height="{{ w }}"
 loading="lazy" alt="{{ t.dataset }} {{ t.image_id }}" title="{{ t.dataset }} · {{ t.image_id }}">
{%- else %}<div class="missing-img" style="width:{{ w }}px;height:{{ w }}px">no image</div>
{%- endif %}<figcaption>{{ t.dataset }}{% if t.note %} · {{ t.note }}{% endif %}</figcaption>
</figure>
{%- endmacro %}
{% macro kv(d, depth=0) -%}
<table class="data kv">{% for k, v in d.items() %}<tr><td class="k">{{ k }}</td><td>
{%- if v is mapping and depth < 2 and v %}{{ kv(v, depth + 1) }}
{%- elif v is mapping or (v is iterable and v is not string) %}<code>{{ tojson(v) }}</code>
{%- else %}{{ v }}{% endif %}</td></tr>{% endfor %}</table>
{%- endmacro %}

<section id="overview"><h2>Overview</h2>
{% for t in missing_tables %}<div class="warn">Table <code>{{ t }}</code> has not been
materialised yet; sections that need it are empty.</div>{% endfor %}
{% if missing_models %}<div class="warn">No statistics yet for
{{ missing_models|join(', ') }} (materialise their partitions).</div>{% endif %}
{% if not controls %}<div class="warn">This run has no null control model: nothing shows how
many flags the pipeline alone produces. Add one (<code>family: control</code>) before trusting
a blindspot.</div>
{% elif controls|selectattr("significant", "none")|list %}<div class="warn">Controls not yet
materialised: {{ controls|selectattr("significant", "none")|map(attribute="key")|join(", ") }}.
</div>
{% elif controls|rejectattr("significant", "none")|selectattr("significant")|list
   or controls|rejectattr("paper", "none")|selectattr("paper")|list %}
<div class="warn control-dirty">Null controls are <b>not clean</b>:
{% for c in controls %}{{ c.key }} flags {{ c.significant }} significant and {{ c.paper }}
paper-verdict concepts{{ "; " if not loop.last }}{% endfor %}. A control has no blindspot by
construction: these flags are pipeline artefacts (file formats, resizing, pairing), and a
model's flags are not evidence until they clearly exceed its control floor.</div>
{% else %}<p class="ok control-clean">Null controls clean: {{ controls|map(attribute="key")|
join(", ") }} flag 0 concepts under either verdict.</p>{% endif %}
{% if sections %}
<table class="data"><thead><tr><th class="t">model</th>
{% for k in sections[0].counts %}<th>{{ k }}</th>{% endfor %}</tr></thead><tbody>
{% for s in sections %}<tr><td class="t"><a href="#model-{{ s.key }}">{{ s.key }}</a></td>
{% for k in sections[0].counts %}<td>{{ num(s.counts.get(k)) }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>
<p class="note">“paper”: δ beyond the thresholds (the paper's verdict). “significant”: a
minimum-effect test of “the change is negligible” (|d_z| ≤ {{ sp.min_effect_size }} and
|relative| ≤ {{ sp.min_relative }}), Benjamini–Hochberg across concepts at
α = {{ sp.alpha }}; “expected false flags” is α × significant, the FDR bound in counts.
“control floor”: the most flags any null control model got (its flags are artefacts).
{% if 'FD (CLS)' in sections[0].counts %}“FD (CLS)”: the Fréchet distance between Gaussians
fitted to the real and the generated images' CLS tokens of the run's encoder (FD in DINOv2
space); precision, recall, density and coverage: k-nearest-neighbour manifolds on the same
vectors (k = {{ cfg.stats.prdc_k }}); each with its bootstrap interval over captions
({{ (sp.ci_level * 100)|round|int }} %). Two finite samples of one distribution do not give
FD 0: a null control model shows the floor at these sample sizes.
{% endif %}Concept names are the caption terms most associated with a concept
{%- if not labels_present %} (table <code>concept_labels</code> not materialised yet:
concepts are shown by id){% endif %}.</p>
{% endif %}
{% if cross %}<div class="figs">{% for fig, cap in cross %}<div class="fig">{{ fig }}
<div class="cap">{{ cap }}</div></div>{% endfor %}</div>{% endif %}
</section>

{% for s in sections %}
<section id="model-{{ s.key }}"><h2>{{ s.key }}</h2>
{% for n in s.notes %}<div class="warn">{{ n }}</div>{% endfor %}
<div class="figs">{% for fig in s.figures %}<div class="fig">{{ fig }}</div>{% endfor %}</div>
<p class="note">Blue: suppressed, orange: exaggerated (outlined: significant);
hover a point for its concept.</p>
{% for kind in ['suppressed', 'exaggerated'] %}
<h3>Top {{ kind }} concepts ({{ s.cards.get(kind, [])|length }} shown)</h3>
{% if not s.cards.get(kind) %}<p class="note">None flagged.</p>{% endif %}
<div class="cards">
{% for c in s.cards.get(kind, []) %}
<div class="card {{ c.kind }}" id="{{ c.anchor }}">
<h4>concept {{ c.concept }} <span class="name">{{ c.name }}</span>
<span class="badge {{ c.kind }}">{{ c.kind }}</span>
{% if c.stats.get('significant') %}<span class="badge sig">q &lt; α</span>{% endif %}
{% if c.stats.get('paper_verdict') %}<span class="badge paper">paper δ</span>{% endif %}
{% if c.stats.get('verification_status') %}<span class="badge {{ c.stats.verification_status }}"
 title="blindspot_verification: prompted again with new seeds">{{ c.stats.verification_status
 }}</span>{% endif %}</h4>
<div class="nums">
{% if 'delta' in c.stats %}<span>δ = {{ num(c.stats.delta) }}
{{ ci(c.stats.get('delta_ci')) }}</span>{% endif %}
{% if 'delta_energy' in c.stats %}<span>ΔE = {{ num(c.stats.delta_energy) }}
{{ ci(c.stats.get('delta_energy_ci')) }}</span>{% endif %}
{% if 'q_value' in c.stats %}<span>q = {{ num(c.stats.q_value) }}</span>{% endif %}
{% if 'effect_size' in c.stats %}<span>d = {{ num(c.stats.effect_size) }}</span>{% endif %}
{% if 'energy_real' in c.stats %}<span>E real {{ num(c.stats.energy_real) }} → gen
{{ num(c.stats.get('energy_gen')) }}</span>{% endif %}
{% if 'image_freq_real' in c.stats %}<span>in {{ num(100 * c.stats.image_freq_real) }}% of
real images</span>{% endif %}
</div>
<div class="note">{{ c.gallery_title }}; heat: the concept's activation per patch, one scale
per card</div>
<div class="gallery">
{% for real, gen in c.pairs %}<div class="pair"><div class="imgs">{{ tile(real, px) }}
{{ tile(gen, px) }}</div><div class="caption" title="{{ real.caption }}">{{ real.caption }}</div>
</div>{% else %}<p class="note">No top images recorded for this concept.</p>{% endfor %}
</div></div>
{% endfor %}
</div>
{% endfor %}

<h3>What only this model cannot draw, and what all models miss</h3>
{% if s.specific is none %}<p class="note">No consensus: this run has no other (non-control)
model with codes, so a model-specific change cannot be told from a shared one.</p>
{% else %}<div class="specific-view">
<div><h4>Only this model ({{ s.specific|length }})</h4><p class="note">Flagged, and changed
against the other models' consensus for the same captions too (<code>specific</code>).</p>
<ul>{% for r in s.specific %}<li><span class="badge {{ r.kind }}">{{ r.kind }}</span> concept
{{ r.concept }} {{ r.name }} — rank {{ r.rank }}, change ≥ {{ num(r.change_lcb) }}</li>
{% else %}<li class="note">none</li>{% endfor %}</ul></div>
<div><h4>Shared with the other models ({{ s.shared|length }})</h4><p class="note">Flagged
against the real set, but within what the other models' consensus shows: what all models
miss (or a style they share).</p>
<ul>{% for r in s.shared %}<li><span class="badge {{ r.kind }}">{{ r.kind }}</span> concept
{{ r.concept }} {{ r.name }} — rank {{ r.rank }}</li>
{% else %}<li class="note">none</li>{% endfor %}</ul></div>
</div>{% endif %}

<h3>All flagged concepts ({{ s.n_flagged }}{% if s.n_flagged > s.flagged_rows|length %},
first {{ s.flagged_rows|length }} shown{% endif %})</h3>
{% if s.flagged_rows %}
<input class="filter" data-table="flagged-{{ s.key }}" placeholder="filter rows…"
 aria-label="filter flagged concepts of {{ s.key }}">
<table class="data sortable" id="flagged-{{ s.key }}"><thead><tr>
{% for col in s.flagged_columns %}<th{% if col in ('name', 'kind') %} class="t"{% endif %}>
{{ col }}</th>{% endfor %}</tr></thead><tbody>
{% for r in s.flagged_rows %}<tr>
{% for col in s.flagged_columns %}{% set v = r.get(col) %}
<td{% if col in ('name', 'kind') %} class="t"{% endif %}
{%- if v is number %} data-v="{{ v }}"{% endif %}>
{%- if col == 'concept' and r._anchor %}<a href="#{{ r._anchor }}">{{ v }}</a>
{%- elif col == 'kind' %}<span class="badge {{ v }}">{{ v }}</span>
{%- else %}{{ num(v) if v is not string else v }}{% endif %}</td>{% endfor %}
</tr>{% endfor %}</tbody></table>
{% else %}<p class="note">No concept flagged.</p>{% endif %}

<h3>Datapoints: real vs generated from the same caption</h3>
{% if s.datapoints %}
<p class="note">The {{ s.datapoints|length }} pairs whose concept vectors differ most
(‖ξ(x′) − ξ(x)‖); “missing”: concepts of the real image the generated one lacks, “added”: the
reverse.</p>
<div class="dps">{% for d in s.datapoints %}<div class="dp">
<div class="pair"><div class="imgs">{{ tile(d.real, px) }}{{ tile(d.gen, px) }}</div>
<div class="caption" title="{{ d.real.caption }}">{{ d.real.caption }}</div></div>
<div class="concepts-list"><div>‖Δξ‖ = {{ num(d.distance) }}</div>
{% if d.missing %}<div>missing:</div><div class="chips">{% for k, n in d.missing %}
<span class="chip sup" title="concept {{ k }}">{{ k }}{% if n %} · {{ n }}{% endif %}</span>
{% endfor %}</div>{% endif %}
{% if d.added %}<div>added:</div><div class="chips">{% for k, n in d.added %}
<span class="chip exa" title="concept {{ k }}">{{ k }}{% if n %} · {{ n }}{% endif %}</span>
{% endfor %}</div>{% endif %}
<div class="note">{{ d.real.image_id }}</div></div>
</div>{% endfor %}</div>
{% else %}<p class="note">Table <code>datapoint_deltas</code> has no rows for this model
yet.</p>{% endif %}

<h3>Memorisation candidates</h3>
{% if s.memorization %}
<p class="note">{{ s.memorization_total }} generated image(s) closer to a real image than real
images come to each other (candidates); the {{ s.memorization|length }} lowest-distance pairs
shown, generated beside its nearest real image. Distance in units of the threshold (&lt; 1:
candidate); evidence: patch maps and/or pixels; concept: ‖ξ(x′) − ξ(x)‖ relative.</p>
<div class="dps">{% for m in s.memorization %}<div class="dp">
<div class="pair"><div class="imgs">{{ tile(m.gen, px) }}
{% if m.real %}{{ tile(m.real, px) }}{% endif %}</div>
<div class="caption">{{ m.gen.caption }}</div></div>
<div class="concepts-list"><div>distance {{ num(m.distance) }}
{% if m.candidate %}<span class="badge exaggerated">candidate</span>{% endif %}
{% if m.across_seeds %}<span class="badge suppressed">across seeds</span>{% endif %}</div>
{% if m.seeds %}<div>reproduced on {{ m.seeds[0] }} of {{ m.seeds[1] }} seeds</div>{% endif %}
{% if m.threshold is not none %}<div>threshold {{ num(m.threshold) }}</div>{% endif %}
{% if m.evidence %}<div>evidence: {{ m.evidence }}</div>{% endif %}
{% if m.concept_distance is not none %}<div>concept {{ num(m.concept_distance) }}</div>{% endif %}
{% if m.own_pair %}<div class="note">nearest real image is its own caption's image</div>
{% elif m.own_pair is not none %}<div><b>nearest real image is another caption's</b></div>
{% endif %}
<div class="note">{{ m.gen.image_id }}{% if m.real %} ↔ {{ m.real.image_id }}{% endif %}</div>
</div></div>{% endfor %}</div>
{% elif s.memorization_total %}<p class="note">{{ s.memorization_total }} candidate(s).</p>
{% else %}<p class="note">None recorded (or table <code>memorization_candidates</code> not
materialised).</p>{% endif %}
</section>
{% endfor %}

{% for a in analyses %}<section id="{{ a.id }}"><h2>{{ a.title }}</h2>
{{ a.body }}</section>
{% endfor %}
<section id="lineage"><h2>Lineage</h2>
<p class="note">What produced every number above. Each table row also carries
model_key, model_version, sae_version and run_id.</p>
<div class="lgrid">
<div><h3>Run</h3>{{ kv(lineage.run) }}</div>
<div><h3>Encoder</h3>{{ kv(lineage.encoder) }}</div>
<div><h3>SAE</h3>{% if lineage.sae %}{{ kv(lineage.sae) }}{% else %}<p class="note">No SAE
header found.</p>{% endif %}</div>
{% for key, m in lineage.models.items() %}<div><h3>Model {{ key }}</h3>{{ kv(m) }}</div>
{% endfor %}
{% if lineage.stamps %}<div><h3>Table stamps</h3>{{ kv(lineage.stamps) }}</div>{% endif %}
</div>
<details><summary>raw lineage JSON</summary><pre class="json">{{ lineage_json }}</pre></details>
</section>

{% if other_tables %}<section id="tables"><h2>More tables</h2>
{% for t in other_tables %}<h3>{{ t.name }} ({{ t.rows }} rows{% if t.head.height < t.rows %},
first {{ t.head.height }} shown{% endif %})</h3>
<div class="scroll"><table class="data"><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>
{% endfor %}</tr></thead><tbody>{% for r in t.head.iter_rows() %}<tr>{% for v in r %}
{% if v is number %}<td>{{ num(v) }}</td>{% else %}<td class="s">{{ v }}</td>{% endif %}
{% endfor %}</tr>{% endfor %}</tbody></table></div>{% endfor %}</section>{% endif %}
</main>
<script>{{ js }}</script>
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=False)


def _tojson(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


_ENV.globals.update(fmt=fmt, tojson=_tojson)
TEMPLATE = _ENV.from_string(_TEMPLATE)


def render_page(**context: Any) -> str:
    """The page; SVG figure strings are inserted as markup (they are escaped where drawn)."""
    sections = context["sections"]
    for s in sections:
        s.figures = [Markup(f) for f in s.figures]
    context["cross"] = [(Markup(f), cap) for f, cap in context["cross"]]
    context["analyses"] = [  # (id, title, markup) sections after the models
        {"id": i, "title": t, "body": Markup(b)} for i, t, b in context.get("analyses", [])
    ]
    lineage = context["lineage"]
    context["lineage_json"] = json.dumps(lineage.__dict__, indent=1, default=str)
    return TEMPLATE.render(css=Markup(_CSS), js=Markup(_JS), **context)
