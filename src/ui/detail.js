// The span detail panel: chat messages as role-labelled bubbles, tool definitions and tool
// calls, the (reassembled) output, params, tokens, cost, TTFT, metadata, tags, the error, and
// the raw bodies. Understands OpenAI chat/completions, the Responses API, Anthropic Messages and
// embeddings; anything else is shown as JSON. Long text is cut with "show more".

import {
  html, enc, fmtMs, fmtInt, fmtCost, fmtFull, fmtBytes, statusPill, kindBadge, spanModel,
  longText, pretty,
} from './lib.js';

const isObj = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

export function renderDetail(s, ctx) {
  const l = s.llm;
  const input = inputView(s);
  const output = outputView(s);
  const tools = toolDefs((isObj(s.input) && s.input.tools) || (l && l.params && l.params.tools));
  const params = l && l.params ? Object.entries(l.params).filter(([k]) => k !== 'tools' && k !== 'messages') : [];
  const meta = Object.entries(s.metadata || {});
  return html`<section class="panel span-detail" data-testid="span-detail" data-span-id="${s.span_id}">
    <div class="panel-head">${kindBadge(s.kind)}<h2 title="${s.name}">${s.name}</h2>${statusPill(s.status)}
      <span class="spacer"></span><button type="button" class="icon-btn" data-close-detail aria-label="Close the span detail" title="Close (Esc)">×</button></div>
    <div class="meta-line">
      <span title="offset from the trace start">+${fmtMs(ctx.offsetMs)}</span>
      <span title="duration">${fmtMs(s.duration_ms)}</span>
      <span class="mono" title="span id">${s.span_id}</span>
      ${ctx.parent ? html`<span>parent <a href="#/traces/${enc(ctx.traceId)}/spans/${enc(ctx.parent.span_id)}">${ctx.parent.name}</a></span>` : ''}
      <span title="${fmtFull(s.start_time)} → ${fmtFull(s.end_time)}">${fmtFull(s.start_time)}</span>
    </div>
    ${s.status === 'error' || s.error ? html`<div class="error-box" data-testid="span-error" role="alert"><b>${s.error && s.error.type ? s.error.type : 'error'}</b> ${s.error ? s.error.message : 'this span failed'}</div>` : ''}
    ${s.status === 'cancelled' ? html`<div class="warn-box">The client hung up before the call finished; the output is what had arrived.</div>` : ''}
    ${l ? llmFacts(s, l) : ''}
    ${section('Input', input.summary, input.body, 'span-input')}
    ${tools.length ? section('Tools', `${tools.length} defined`, html`<div class="tools">${tools.map(toolDef)}</div>`, 'span-tools') : ''}
    ${section('Output', output.summary, output.body, 'span-output')}
    ${params.length ? section('Params', `${params.length}`, html`<dl class="kv">${params.map(([k, v]) => html`<div><dt>${k}</dt><dd class="mono">${typeof v === 'string' ? v : JSON.stringify(v)}</dd></div>`)}</dl>`, 'span-params') : ''}
    ${meta.length || (s.tags && s.tags.length) || s.session_id || s.user_id ? section('Metadata', '', html`
      ${s.tags && s.tags.length ? html`<div class="tags-line">${s.tags.map((t) => html`<span class="tag">${t}</span>`)}</div>` : ''}
      <dl class="kv">
        ${s.session_id ? html`<div><dt>session</dt><dd><a href="#/sessions/${enc(s.session_id)}">${s.session_id}</a></dd></div>` : ''}
        ${s.user_id ? html`<div><dt>user</dt><dd>${s.user_id}</dd></div>` : ''}
        ${meta.map(([k, v]) => html`<div><dt>${k}</dt><dd>${typeof v === 'string' ? v : JSON.stringify(v)}</dd></div>`)}
      </dl>`, 'span-metadata') : ''}
    ${s.http || s.capture ? section('HTTP', s.http ? `${s.http.method} ${s.http.status ?? '—'}` : '', html`<dl class="kv">
      ${s.http ? html`<div><dt>request</dt><dd class="mono">${s.http.method} ${s.http.path}</dd></div>
        <div><dt>status</dt><dd>${s.http.status ?? 'no response'}</dd></div>
        <div><dt>upstream</dt><dd class="mono">${s.http.upstream}</dd></div>` : ''}
      ${s.capture ? html`<div><dt>captured</dt><dd>${fmtBytes(s.capture.bytes_in)} in · ${fmtBytes(s.capture.bytes_out)} out · ${s.capture.chunks} chunk${s.capture.chunks === 1 ? '' : 's'}${s.capture.truncated ? html` · <span class="err-text">truncated at max_capture_bytes</span>` : ''}</dd></div>` : ''}
    </dl>`, 'span-http', false) : ''}
    ${section('Raw', 'JSON', html`
      <h4>input</h4>${longText(pretty(s.input), 'json')}
      <h4>output</h4>${longText(pretty(s.output), 'json')}`, 'span-raw', false)}
  </section>`;
}

function section(title, summary, body, testid, open = true) {
  return html`<details class="sec" ${open ? 'open' : ''} data-testid="${testid}"><summary><span class="sec-title">${title}</span> <span class="muted">${summary || ''}</span></summary><div class="sec-body">${body}</div></details>`;
}

function llmFacts(s, l) {
  const model = spanModel(s);
  const tokens = l.input_tokens !== null && l.input_tokens !== undefined
    ? html`${fmtInt(l.input_tokens)} <span class="muted">in</span> · ${fmtInt(l.output_tokens)} <span class="muted">out</span>${l.usage_source === 'estimated' ? html` <span class="tag" title="the upstream reported no usage; counted by llm-tracer">estimated</span>` : ''}`
    : html`<span class="muted">—</span>`;
  const extra = [];
  if (l.cached_input_tokens) extra.push(`${fmtInt(l.cached_input_tokens)} cached`);
  if (l.reasoning_tokens) extra.push(`${fmtInt(l.reasoning_tokens)} reasoning`);
  return html`<div class="facts-grid" data-testid="llm-facts">
    <div><dt>model</dt><dd>${model || '—'}${l.request_model && l.response_model && l.request_model !== l.response_model ? html` <span class="muted">(asked ${l.request_model})</span>` : ''}</dd></div>
    <div><dt>provider</dt><dd>${l.provider || '—'} <span class="muted">${l.operation || ''}</span></dd></div>
    <div><dt>tokens</dt><dd>${tokens}${extra.length ? html` <span class="muted">(${extra.join(', ')})</span>` : ''}</dd></div>
    <div><dt>cost</dt><dd>${fmtCost(l.cost_usd)}</dd></div>
    <div><dt>latency</dt><dd>${fmtMs(s.duration_ms)}</dd></div>
    <div><dt>TTFT</dt><dd data-testid="ttft-value">${l.stream ? fmtMs(l.ttft_ms) : html`<span class="muted">not streamed</span>`}</dd></div>
    <div><dt>finish</dt><dd>${l.finish_reason || '—'}</dd></div>
    <div><dt>stream</dt><dd>${l.stream ? 'yes' : 'no'}</dd></div>
  </div>`;
}

// --- input ---

function inputView(s) {
  const inp = s.input;
  if (inp === null || inp === undefined) return { summary: 'none', body: html`<p class="muted">No input captured.</p>` };
  if (typeof inp === 'string') return { summary: `${fmtInt(inp.length)} chars`, body: longText(inp) };
  if (isObj(inp)) {
    const msgs = messagesOf(inp, s);
    if (msgs) {
      return { summary: `${msgs.length} message${msgs.length === 1 ? '' : 's'}`, body: html`<div class="chat">${msgs.map(bubble)}</div>` };
    }
    if (inp.input !== undefined && (s.kind === 'embedding' || (s.llm && s.llm.operation === 'embeddings'))) {
      const items = Array.isArray(inp.input) ? inp.input : [inp.input];
      return { summary: `${items.length} input${items.length === 1 ? '' : 's'}`, body: html`<ol class="emb-list">${items.slice(0, 50).map((t) => html`<li>${longText(typeof t === 'string' ? t : JSON.stringify(t))}</li>`)}</ol>${items.length > 50 ? html`<p class="muted">and ${items.length - 50} more</p>` : ''}` };
    }
  }
  return { summary: 'JSON', body: longText(pretty(inp), 'json') };
}

function messagesOf(inp, s) {
  const msgs = [];
  if (typeof inp.system === 'string' && inp.system) msgs.push({ role: 'system', content: inp.system });
  else if (Array.isArray(inp.system) && inp.system.length) msgs.push({ role: 'system', content: inp.system });
  if (typeof inp.instructions === 'string' && inp.instructions) msgs.push({ role: 'system', content: inp.instructions, label: 'instructions' });
  if (Array.isArray(inp.messages)) msgs.push(...inp.messages.filter(isObj));
  else if (Array.isArray(inp.input) && inp.input.some((i) => isObj(i) && (i.role || i.type))) msgs.push(...inp.input.filter(isObj).map(responsesItem));
  else if (typeof inp.input === 'string' && (s.llm && s.llm.operation === 'responses')) msgs.push({ role: 'user', content: inp.input });
  else if (typeof inp.prompt === 'string') msgs.push({ role: 'user', content: inp.prompt, label: 'prompt' });
  else if (Array.isArray(inp.prompt)) msgs.push(...inp.prompt.map((p) => ({ role: 'user', content: String(p), label: 'prompt' })));
  return msgs.length ? msgs : null;
}

/** A Responses API input/output item as a chat message. */
function responsesItem(i) {
  if (i.type === 'function_call') return { role: 'assistant', tool_calls: [{ id: i.call_id || i.id, function: { name: i.name, arguments: i.arguments } }] };
  if (i.type === 'function_call_output') return { role: 'tool', tool_call_id: i.call_id, content: i.output };
  if (i.type === 'reasoning') return { role: 'reasoning', content: (i.summary || []).map((p) => p.text).join('\n') };
  return { role: i.role || i.type || 'message', content: i.content };
}

function bubble(m) {
  const role = String(m.role || 'message');
  const calls = Array.isArray(m.tool_calls) ? m.tool_calls : [];
  if (m.function_call) calls.push({ function: m.function_call });
  const label = [role, m.label, m.name, m.tool_call_id].filter(Boolean).join(' · ');
  return html`<div class="bubble role-${role.replace(/[^a-z_]/gi, '')}"><div class="role">${label}</div>
    ${content(m.content)}${m.refusal ? html`<div class="warn-box">refusal: ${m.refusal}</div>` : ''}
    ${calls.map(toolCall)}</div>`;
}

function content(c) {
  if (c === null || c === undefined || c === '') return '';
  if (typeof c === 'string') return longText(c, 'content');
  if (!Array.isArray(c)) return longText(pretty(c), 'json');
  return c.map((p) => {
    if (typeof p === 'string') return longText(p, 'content');
    if (!isObj(p)) return longText(pretty(p), 'json');
    switch (p.type) {
      case 'text': case 'input_text': case 'output_text':
        return longText(p.text, 'content');
      case 'image_url': case 'input_image': case 'image':
        return html`<div class="part muted">[image${p.image_url && typeof p.image_url.url === 'string' && !p.image_url.url.startsWith('data:') ? `: ${p.image_url.url}` : ''}]</div>`;
      case 'input_audio': case 'audio':
        return html`<div class="part muted">[audio]</div>`;
      case 'tool_use':
        return toolCall({ id: p.id, function: { name: p.name, arguments: p.input } });
      case 'tool_result':
        return html`<div class="toolresult"><div class="tc-head">tool result <span class="mono muted">${p.tool_use_id || ''}</span>${p.is_error ? html` <span class="pill st-error">error</span>` : ''}</div>${content(p.content)}</div>`;
      case 'thinking': case 'redacted_thinking':
        return html`<div class="thinking"><div class="tc-head">thinking</div>${longText(p.thinking || '[redacted]', 'content')}</div>`;
      case 'refusal':
        return html`<div class="warn-box">refusal: ${p.refusal}</div>`;
      default:
        return p.text ? longText(p.text, 'content') : longText(pretty(p), 'json');
    }
  });
}

function toolCall(tc) {
  const f = tc.function || tc;
  let args = f.arguments;
  if (typeof args === 'string') {
    try { args = JSON.parse(args); } catch { /* keep the raw text */ }
  }
  return html`<div class="toolcall" data-testid="tool-call"><div class="tc-head">call <b>${f.name || '?'}</b> <span class="mono muted">${tc.id || ''}</span></div>${longText(pretty(args ?? {}), 'json')}</div>`;
}

// --- tools ---

function toolDefs(tools) {
  if (!Array.isArray(tools)) return [];
  return tools.filter(isObj).map((t) => {
    const f = isObj(t.function) ? t.function : t;
    return { name: f.name || t.type || 'tool', description: f.description || '', schema: f.parameters || f.input_schema || null, type: t.type };
  });
}

function toolDef(t) {
  return html`<div class="tooldef" data-testid="tool-def"><div class="tc-head"><b>${t.name}</b> ${t.type && t.type !== 'function' ? html`<span class="tag">${t.type}</span>` : ''}</div>
    ${t.description ? html`<p>${t.description}</p>` : ''}
    ${t.schema ? html`<details><summary class="muted">parameters</summary>${longText(pretty(t.schema), 'json')}</details>` : ''}</div>`;
}

// --- output ---

function outputView(s) {
  const out = s.output;
  if (out === null || out === undefined) return { summary: 'none', body: html`<p class="muted">No output${s.status === 'error' ? ' (the call failed)' : ''}.</p>` };
  if (typeof out === 'string') return { summary: `${fmtInt(out.length)} chars`, body: html`<div class="chat">${bubble({ role: 'output', content: out })}</div>` };
  if (isObj(out) && isObj(out.error)) {
    return { summary: 'error', body: html`<div class="error-box"><b>${out.error.type || out.error.code || 'error'}</b> ${out.error.message || JSON.stringify(out.error)}</div>` };
  }
  if (isObj(out) && Array.isArray(out.choices)) {
    const parts = out.choices.map((c) => {
      if (isObj(c.message)) return bubble({ ...c.message, role: c.message.role || 'assistant', label: out.choices.length > 1 ? `choice ${c.index}` : null });
      if (typeof c.text === 'string') return bubble({ role: 'assistant', content: c.text });
      return longText(pretty(c), 'json');
    });
    const text = out.choices.map((c) => (isObj(c.message) && typeof c.message.content === 'string' ? c.message.content : typeof c.text === 'string' ? c.text : '')).join('');
    return { summary: text ? `${fmtInt(text.length)} chars${s.llm && s.llm.stream ? ' · reassembled from the stream' : ''}` : '', body: html`<div class="chat">${parts}</div>` };
  }
  if (isObj(out) && out.type === 'message' && Array.isArray(out.content)) {
    return { summary: out.stop_reason || '', body: html`<div class="chat">${bubble({ role: out.role || 'assistant', content: out.content })}</div>` };
  }
  if (isObj(out) && Array.isArray(out.output)) {
    const items = out.output.filter(isObj).map(responsesItem);
    return { summary: `${items.length} item${items.length === 1 ? '' : 's'}`, body: html`<div class="chat">${items.map(bubble)}</div>` };
  }
  if (isObj(out) && Array.isArray(out.data) && out.data.some((d) => isObj(d) && d.embedding !== undefined)) {
    const first = out.data.find((d) => Array.isArray(d.embedding));
    return { summary: 'embeddings', body: html`<p>${out.data.length} vector${out.data.length === 1 ? '' : 's'}${first ? ` of ${first.embedding.length} dimensions` : ''}.</p>` };
  }
  return { summary: 'JSON', body: longText(pretty(out), 'json') };
}

// --- the architecture view's parameters ---

function systemText(inp) {
  if (!isObj(inp)) return null;
  const text = (c) => (typeof c === 'string' ? c : Array.isArray(c) ? c.map((p) => (typeof p === 'string' ? p : p && p.text) || '').join(' ') : '');
  if (inp.system) return text(inp.system);
  if (typeof inp.instructions === 'string') return inp.instructions;
  const m = Array.isArray(inp.messages) && inp.messages.find((x) => isObj(x) && (x.role === 'system' || x.role === 'developer'));
  return m ? text(m.content) : null;
}

/** The parameters a call was made with, as [name, value text] pairs. */
export function callParams(s) {
  const out = [];
  const inp = isObj(s.input) ? s.input : {};
  const p = { ...inp, ...((s.llm && s.llm.params) || {}) };
  const model = spanModel(s);
  if (model) out.push(['model', model]);
  for (const k of ['temperature', 'top_p']) if (p[k] !== undefined && p[k] !== null) out.push([k, String(p[k])]);
  const mt = p.max_tokens ?? p.max_completion_tokens ?? p.max_output_tokens;
  if (mt !== undefined && mt !== null) out.push(['max_tokens', String(mt)]);
  const tools = toolDefs(p.tools).map((t) => t.name);
  if (tools.length) out.push(['tools', tools.join(', ')]);
  if (p.tool_choice !== undefined) out.push(['tool_choice', typeof p.tool_choice === 'string' ? p.tool_choice : JSON.stringify(p.tool_choice)]);
  const rf = p.response_format || (isObj(p.text) ? p.text.format : null);
  if (rf) {
    const name = isObj(rf) ? (rf.json_schema && rf.json_schema.name) || rf.name : null;
    out.push(['response_format', typeof rf === 'string' ? rf : `${rf.type || 'object'}${name ? `: ${name}` : ''}`]);
  }
  const effort = p.reasoning_effort || (isObj(p.reasoning) ? p.reasoning.effort : null);
  if (effort) out.push(['reasoning', String(effort)]);
  if (s.llm && s.llm.stream) out.push(['stream', 'true']);
  const sys = systemText(inp);
  if (sys) out.push(['system prompt', sys.length > 140 ? `${sys.slice(0, 140)}…` : sys]);
  return out;
}
