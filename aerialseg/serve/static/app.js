// AerialSeg web page: choose/drop/paste an image, send it with the expressions, show the result.
// Every server text is inserted with textContent (never as HTML).
"use strict";

const $ = (id) => document.getElementById(id);
let currentFile = null;
let previewUrl = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setFile(file) {
  currentFile = file;
  $("file-name").textContent = file ? `${file.name} (${(file.size / 1e6).toFixed(2)} MB)` : "no image yet";
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  const preview = $("preview");
  // Browsers show PNG and JPEG; a GeoTIFF is previewed only in the result overlay.
  if (file && /^image\/(png|jpeg)$/.test(file.type)) {
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
  } else {
    preview.hidden = true;
  }
  showError("");
}

function link(file, label) {
  const a = document.createElement("a");
  a.href = file.url;
  a.download = file.name;
  a.textContent = label;
  return a;
}

// Ground area: m² below one hectare, hectares above; "–" when the image has no known CRS.
function formatArea(m2) {
  if (m2 === null || m2 === undefined) return "–";
  if (m2 < 10000) return `${Math.round(m2).toLocaleString("en")} m²`;
  return `${(m2 / 10000).toLocaleString("en", { maximumFractionDigits: 2 })} ha`;
}

function showResult(data) {
  $("result-title").textContent =
    `${data.image.name}: ${data.image.width} x ${data.image.height} px` +
    (data.image.crs ? `, ${data.image.crs}` : "") + ` (${data.elapsed_s.toFixed(2)} s)`;
  $("overlay").src = data.overlay.url;
  const warnings = data.warnings || [];
  $("warnings").textContent = warnings.join("\n");
  $("warnings").hidden = warnings.length === 0;
  const body = $("predictions").querySelector("tbody");
  body.replaceChildren();
  for (const p of data.predictions) {
    const row = document.createElement("tr");
    const swatchCell = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.backgroundColor = p.color; // CSSOM, allowed by the style-src policy
    swatch.title = p.color;
    swatchCell.appendChild(swatch);
    row.appendChild(swatchCell);
    const values = [p.index, p.expression, p.score.toFixed(3), p.area.toLocaleString("en"),
      formatArea(p.area_m2)];
    for (const value of values) {
      const cell = document.createElement("td");
      cell.textContent = String(value);
      row.appendChild(cell);
    }
    const cell = document.createElement("td");
    cell.appendChild(link(p.mask, "mask PNG"));
    row.appendChild(cell);
    body.appendChild(row);
  }
  const downloads = $("downloads");
  downloads.replaceChildren(link(data.overlay, "Overlay PNG"));
  for (const d of data.downloads) downloads.appendChild(link(d, d.label));
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  showError("");
  if (!currentFile) {
    showError("Choose, drop or paste an image first.");
    return;
  }
  const count = $("expressions").value.split("\n").filter((l) => l.trim()).length;
  if (limits.max_expressions && count > limits.max_expressions) {
    showError(`${count} expressions: the server takes at most ${limits.max_expressions} per request.`);
    return;
  }
  const job = Array.from(crypto.getRandomValues(new Uint8Array(16)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  const form = new FormData();
  form.append("image", currentFile, currentFile.name || "pasted.png");
  form.append("expressions", $("expressions").value);
  form.append("job", job);
  $("submit").disabled = true;
  $("status").textContent = "Uploading…";
  const started = performance.now();
  const poll = setInterval(() => showProgress(job), 500);
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const detail = data && data.detail ? data.detail : response.statusText;
      showError(`Error ${response.status}: ${detail}`);
      $("status").textContent = "";
      return;
    }
    showResult(data);
    $("status").textContent = `Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (error) {
    showError(`Could not reach the server: ${error.message}`);
    $("status").textContent = "";
  } finally {
    clearInterval(poll);
    $("submit").disabled = false;
  }
}

const PHASES = {
  read: "Reading the image…",
  queued: "Waiting for the model…",
  export: "Writing masks, overlay and GeoJSON…",
};

async function showProgress(job) {
  try {
    const response = await fetch(`/api/progress/${job}`);
    if (!response.ok || !$("submit").disabled) return;
    const p = await response.json();
    if (!$("submit").disabled || p.phase === "done") return;
    $("status").textContent = p.phase === "predict" && p.total
      ? `Segmenting: window ${p.done} / ${p.total}`
      : PHASES[p.phase] || "Segmenting…";
  } catch (_) {
    // progress is best effort; the result or the error comes with the POST's answer
  }
}

let limits = {};

function init() {
  $("file").addEventListener("change", () => setFile($("file").files[0] || null));
  const drop = $("drop");
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") $("file").click();
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("dragging"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files.length) setFile(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const items = e.clipboardData ? Array.from(e.clipboardData.files) : [];
    const image = items.find((f) => f.type.startsWith("image/")) || items[0];
    if (image) {
      e.preventDefault();
      const name = image.name && image.name !== "image.png" ? image.name : "pasted.png";
      setFile(new File([image], name, { type: image.type }));
    }
  });
  $("form").addEventListener("submit", submit);
  fetch("/api/info").then((r) => r.json()).then((info) => {
    limits = info;
    const mb = (info.max_upload_bytes / 1048576).toFixed(0);
    $("model-info").textContent =
      `Model: ${info.model}. Uploads up to ${mb} MB, ${info.max_expressions} expressions.`;
  }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", init);
