// The playground: streams /v1/completions (server-sent events) into the page, as any OpenAI client would.
"use strict";

const $ = (id) => document.getElementById(id);
let modelId = null;
let controller = null;

// The key from the API key field (serving/static/apikey.js: kept in localStorage, sent as a bearer token).
const headers = () => charlmKey.headers();

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return charlmKey.explain(response.status, body.error ? body.error.message : response.statusText);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("model").textContent = "model list unavailable: " + (await errorMessage(response));
    return null;
  }
  const card = (await response.json()).data[0];
  modelId = card.id;
  $("model").textContent = `model ${card.id}, version ${card.version} (${card.backend} backend)`;
  return modelId;
}

async function generate() {
  if (controller) controller.abort();
  controller = new AbortController();
  if (!modelId && !(await loadModel())) return;
  const prompt = $("prompt").value;
  const body = {
    model: modelId, prompt, stream: true,
    max_tokens: parseInt($("length").value, 10),
    temperature: parseFloat($("temperature").value),
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  $("prompt-echo").textContent = prompt;
  $("generated").textContent = "";
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("generating…");
  const started = performance.now();
  let chars = 0;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const payload = JSON.parse(data);
        if (payload.error) throw new Error(payload.error.message);
        const text = payload.choices.length ? payload.choices[0].text : "";
        chars += text.length;
        $("generated").textContent += text;
      }
      const seconds = (performance.now() - started) / 1000;
      setStatus(`${chars} characters, ${(chars / Math.max(seconds, 1e-3)).toFixed(0)} chars/s`);
    }
    setStatus(`done: ${chars} characters in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  } catch (e) {
    if (e.name === "AbortError") setStatus(`stopped after ${chars} characters`);
    else setStatus("error: " + e.message, true);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    controller = null;
  }
}

$("form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
$("stop").addEventListener("click", () => { if (controller) controller.abort(); });
$("apikey").addEventListener("change", () => { modelId = null; loadModel(); });  // a key typed after a 401

// ?prompt=…&temperature=…&length=…&seed=…&autostart=1 fill the form (shareable links).
const params = new URLSearchParams(location.search);
for (const [param, id] of [["prompt", "prompt"], ["temperature", "temperature"], ["length", "length"], ["seed", "seed"]]) {
  if (params.has(param)) $(id).value = params.get(param);
}
loadModel().then(() => { if (params.get("autostart") === "1") generate(); });
