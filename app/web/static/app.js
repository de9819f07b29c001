// faceverify's try-it page: plain JavaScript, no build step. Talks to the same API as
// any client; the API key (if any) lives in this tab's sessionStorage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "faceverify.apiKey";
let enrollFiles = [];
// The collection an admin key of every collection has picked; null for a key bound to
// one (the server then acts on the key's own collection).
let collection = null;

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { "X-API-Key": key } : {};
}

// Plain-words messages for the API's stable error codes.
const MESSAGES = {
  no_face: "No face was found in this photo. Try a sharper, well-lit, frontal photo.",
  multiple_faces: "This photo shows more than one face. Use a photo of just this person.",
  face_too_small: "The face is too small in this photo. Move closer or crop the photo.",
  invalid_image: "This file could not be read as an image (it may be damaged).",
  unsupported_media_type: "This file is not a photo format the server reads (JPEG, PNG, WebP...).",
  image_too_large: "This photo has too many pixels. Send a smaller one.",
  request_too_large: "The upload is too large. Send fewer or smaller photos.",
  subject_not_found: "There is no such subject. Enroll them first.",
  subject_has_no_faces: "This subject has no enrolled photos left.",
  service_busy: "The server is busy. Try again in a moment.",
  validation_error: "Some fields are missing or not valid.",
  subject_exists: "A subject with this id exists already. Choose another id, or delete it first.",
  face_mismatch: "This photo does not look like the same person as the subject's other photos.",
  too_many_images: "Too many photos at once. Send at most 20.",
  too_many_requests: "The server is busy. Try again in a moment.",
  request_body_timeout: "The upload was too slow. Check the connection and try again.",
  collection_not_found: "This collection does not exist (any more). Pick another one.",
};

// The path with the picked collection, for admin keys of every collection.
function inCollection(path) {
  if (collection === null) return path;
  return `${path}${path.includes("?") ? "&" : "?"}collection=${encodeURIComponent(collection)}`;
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, { method, body, headers: headers() });
  } catch (err) {
    return { ok: false, status: 0, data: { detail: "The server could not be reached." } };
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = {}; }
  return { ok: response.ok, status: response.status, data };
}

function problemText(data, status) {
  if (status === 401 || status === 403) return "The server needs a valid API key (see 'API key' above).";
  if (data && data.code === "face_quality_too_low") {
    // Why the photo was refused, and what to do about each reason (from the server).
    return `This photo is not good enough to enroll (face quality ${data.quality} of 100; ` +
      `at least ${data.min_quality} is needed). ${(data.advice || []).join(" ")}`;
  }
  if (data && data.code === "face_not_enrollable") {
    return `This photo cannot be enrolled. ${(data.advice || []).join(" ")}`;
  }
  return MESSAGES[data && data.code] || (data && data.detail) || `Request failed (${status}).`;
}

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

// A photo with boxes drawn over it. Boxes are in the photo's own (upright) pixels; the
// browser also shows photos upright, so scaling by the displayed size is enough.
function figure(src, caption, boxes = [], opts = {}) {
  const fig = el("figure");
  const frame = el("div", { class: "frame" });
  const img = el("img", { src, alt: opts.alt || caption });
  frame.appendChild(img);
  img.addEventListener("load", () => {
    for (const [i, b] of boxes.entries()) {
      const sx = img.clientWidth / img.naturalWidth;
      const sy = img.clientHeight / img.naturalHeight;
      const box = el("div", { class: i === 0 || !opts.firstOnly ? "box" : "box other" });
      box.style.left = `${b.left * sx}px`;
      box.style.top = `${b.top * sy}px`;
      box.style.width = `${(b.right - b.left) * sx}px`;
      box.style.height = `${(b.bottom - b.top) * sy}px`;
      frame.appendChild(box);
    }
  });
  fig.appendChild(frame);
  const cap = el("figcaption", opts.error ? { class: "error" } : {}, caption);
  fig.appendChild(cap);
  return fig;
}

// ---- API key ---------------------------------------------------------------------
function showKeyStatus() {
  $("key-status").textContent = sessionStorage.getItem(KEY)
    ? "A key is set for this tab." : "No key set: the server needs one (faceverify keys create, or the key printed at first start).";
}
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const value = $("api-key").value.trim();
  if (value) sessionStorage.setItem(KEY, value);
  $("api-key").value = "";
  showKeyStatus();
  refreshCollections();
});
$("key-clear").addEventListener("click", () => { sessionStorage.removeItem(KEY); showKeyStatus(); });

// ---- collection ----------------------------------------------------------------------
// An admin key of every collection picks one here; any other key shows its own.
async function refreshCollections() {
  const select = $("collection-select");
  const status_ = $("collection-status");
  const info = await api("GET", "/info");
  if (!info.ok) { status_.textContent = ""; return; }
  const access = info.data.access;
  const everyCollection = access.collection === null && access.scopes.includes("admin");
  select.hidden = $("collection-label").hidden = !everyCollection;
  if (!everyCollection) {
    collection = null;
    status_.textContent = `Collection: ${access.collection} (this key's own).`;
  } else {
    const listed = await api("GET", "/collections");
    const names = listed.ok ? listed.data.map((c) => c.collection_id) : ["default"];
    const keep = names.includes(collection) ? collection : (names.includes("default") ? "default" : names[0]);
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
    select.value = keep;
    collection = keep;
    status_.textContent = "This key may use every collection: people enrolled in one are not seen from another.";
  }
  refreshSubjects();
}
$("collection-select").addEventListener("change", (e) => {
  collection = e.target.value;
  $("enroll-result").replaceChildren();
  $("verify-result").replaceChildren();
  refreshSubjects();
});

// ---- enroll ------------------------------------------------------------------------
function setEnrollFiles(files) {
  enrollFiles = files.filter((f) => f.type.startsWith("image/") || f.type === "");
  const previews = $("enroll-previews");
  previews.replaceChildren(...enrollFiles.map((f) => figure(URL.createObjectURL(f), f.name)));
}
$("enroll-files").addEventListener("change", (e) => setEnrollFiles([...e.target.files]));
const drop = $("enroll-drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setEnrollFiles([...enrollFiles, ...e.dataTransfer.files]);
});

$("camera-start").addEventListener("click", async () => {
  const video = $("camera-video");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    $("enroll-result").textContent = "This browser cannot use a webcam here (it needs https or localhost).";
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.hidden = false;
    $("camera-snap").hidden = false;
  } catch (err) {
    $("enroll-result").textContent = "The webcam could not be opened: " + err.message;
  }
});
$("camera-snap").addEventListener("click", () => {
  const video = $("camera-video");
  const canvas = el("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    const file = new File([blob], `webcam-${Date.now()}.jpg`, { type: "image/jpeg" });
    setEnrollFiles([...enrollFiles, file]);
  }, "image/jpeg", 0.92);
});

$("enroll-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("enroll-result");
  if (!enrollFiles.length) { out.textContent = "Choose at least one photo."; return; }
  const form = new FormData();
  form.append("subject_id", $("enroll-subject").value.trim());
  if ($("enroll-name").value.trim()) form.append("name", $("enroll-name").value.trim());
  for (const f of enrollFiles) form.append("image", f, f.name);
  out.textContent = "Enrolling…";
  const { ok, status, data } = await api("POST", inCollection("/enroll"), form);
  const previews = $("enroll-previews");
  if (ok) {
    previews.replaceChildren(...enrollFiles.map((f, i) =>
      figure(URL.createObjectURL(f), `${f.name}: face found`, [data.faces[i].box])));
    out.replaceChildren(el("p", {}, `Enrolled ${data.faces.length} photo(s). ` +
      `${data.subject.subject_id} now has ${data.face_count} face(s).`));
    enrollFiles = [];
    $("enroll-files").value = "";
    refreshSubjects(data.subject.subject_id);
    return;
  }
  const idx = data && Number.isInteger(data.image_index) ? data.image_index : null;
  if (idx !== null && enrollFiles[idx]) {
    const f = enrollFiles[idx];
    previews.replaceChildren(...enrollFiles.map((g, i) => i === idx
      ? figure(URL.createObjectURL(g), `${g.name}: ${problemText(data, status)}`,
               data.boxes || (data.box ? [data.box] : []), { error: true })
      : figure(URL.createObjectURL(g), g.name)));
    out.replaceChildren(el("p", { class: "error" },
      `Nothing was stored: ${f.name}: ${problemText(data, status)}`));
  } else {
    out.replaceChildren(el("p", { class: "error" }, `Nothing was stored: ${problemText(data, status)}`));
  }
});

// ---- verify ------------------------------------------------------------------------
$("verify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("verify-result");
  const file = $("verify-file").files[0];
  const subject = $("verify-subject").value.trim();
  if (!file || !subject) { out.textContent = "Choose a subject and a photo."; return; }
  const form = new FormData();
  form.append("subject_id", subject);
  form.append("image", file, file.name);
  if ($("verify-thorough").checked) form.append("mode", "thorough");
  out.textContent = "Checking…";
  const { ok, status, data } = await api("POST", inCollection("/verify"), form);
  if (!ok) {
    out.replaceChildren(el("p", { class: "error" }, problemText(data, status)));
    return;
  }
  const verdict = el("p", { class: data.match ? "verdict match" : "verdict nomatch" },
    data.match ? `Match: this looks like ${subject}` : `No match: this does not look like ${subject}`);
  const gauge = el("div", { class: "gauge" });
  const meter = el("meter", { min: "0", max: "100", low: "20", high: "80", optimum: "100",
    value: String(data.score), "aria-label": "Match percent" });
  gauge.append(meter, el("strong", {}, `${data.score.toFixed(1)}%`));
  const strangers = data.fmr
    ? (data.fmr.one_in
      ? ` About 1 in ${data.fmr.one_in.toLocaleString()} strangers would score this close.`
      : ` None of ${data.fmr.impostor_pairs.toLocaleString()} stranger pairs scored this close.`)
    : "";
  const explain = el("p", { class: "hint" },
    `${data.score.toFixed(1)}% is the calibrated chance that both photos show the same person, ` +
    `assuming genuine and impostor attempts are equally common.${strangers}`);
  const details = el("p", {}, `Distance ${data.distance.toFixed(3)} (a match is ≤ ${data.threshold}` +
    `${data.mode === "thorough" ? ", thorough comparison" : ""}).` +
    (data.probe.multiple_faces ? ` The photo has ${data.probe.faces_detected} faces; the main one was used.` : "") +
    (data.probe.quality.low ? ` This photo's face quality is low (${data.probe.quality.score} of 100), ` +
      `so a true match is more likely to be missed: ${data.probe.quality.advice.join(" ")}` : ""));
  const fig = figure(URL.createObjectURL(file), file.name, [data.probe.box]);
  out.replaceChildren(verdict, gauge, explain, details, fig);
});

// ---- identify ----------------------------------------------------------------------
// Open-set: best is null when the person is most likely not enrolled ("unknown"); the
// candidates' percents are 1:1 figures and are not shown as the answer.
$("identify-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = $("identify-result");
  const file = $("identify-file").files[0];
  if (!file) { out.textContent = "Choose a photo."; return; }
  const form = new FormData();
  form.append("image", file, file.name);
  out.textContent = "Searching…";
  const { ok, status, data } = await api("POST", inCollection("/identify"), form);
  if (!ok) {
    out.replaceChildren(el("p", { class: "error" }, problemText(data, status)));
    return;
  }
  const os = data.open_set;
  const fpir = os ? `${(os.fpir * 100).toLocaleString()}%` : "";
  const n = os ? `${os.subjects.toLocaleString()} enrolled ${os.subjects === 1 ? "person" : "people"}` : "";
  let verdict;
  let explain;
  if (data.best) {
    verdict = el("p", { class: "verdict match" }, `Identified: ${data.best.subject_id}`);
    explain = el("p", { class: "hint" },
      (os.probability !== null
        ? `${(os.probability * 100).toFixed(1)}% chance that this is ${data.best.subject_id}, ` +
          `assuming the person is as likely enrolled as not. `
        : "") +
      `Searched ${n}; at this setting about ${fpir} of people who are not ` +
      "enrolled would be named by mistake.");
  } else {
    verdict = el("p", { class: "verdict nomatch" }, "Unknown: this person is not recognised");
    const why = !os ? "Nobody is enrolled in this collection yet."
      : os.reason === "fpir_unsupported"
        ? `With ${n} the calibration data cannot promise ${fpir} false ` +
          "identifications, so nobody is named."
        : `Nobody among ${n} is close enough to name at ${fpir} false ` +
          "identifications of strangers.";
    explain = el("p", { class: "hint" }, why);
  }
  const fig = figure(URL.createObjectURL(file), file.name, data.probe ? [data.probe.box] : []);
  out.replaceChildren(verdict, explain, fig);
});

// ---- subjects ----------------------------------------------------------------------
async function refreshSubjects(select) {
  const prefix = $("subjects-search").value.trim();
  const query = new URLSearchParams({ limit: "1000" });
  if (prefix) query.set("prefix", prefix);
  const { ok, status, data } = await api("GET", inCollection(`/subjects?${query}`));
  const list = $("subjects-list");
  const status_ = $("subjects-status");
  if (!ok) { status_.textContent = problemText(data, status); list.replaceChildren(); return; }
  status_.textContent = `${data.total} subject(s)${prefix ? ` starting with “${prefix}”` : ""}.`;
  list.replaceChildren(...data.items.map((s) => {
    const li = el("li");
    li.appendChild(el("span", {}, `${s.subject_id}${s.name ? ` (${s.name})` : ""}: ${s.face_count} face(s)`));
    const exp = el("button", { type: "button", class: "secondary", "aria-label": `Export ${s.subject_id}` }, "Export");
    exp.addEventListener("click", () => exportSubject(s.subject_id));
    const del = el("button", { type: "button", class: "danger", "aria-label": `Delete ${s.subject_id}` }, "Delete");
    del.addEventListener("click", () => confirmDelete(li, s.subject_id));
    li.append(exp, del);
    return li;
  }));
  if (!prefix) {
    $("subject-options").replaceChildren(...data.items.map((s) => el("option", { value: s.subject_id })));
    if (select) $("verify-subject").value = select;
  }
}

// A subject access request: everything held about the person, saved as one JSON file
// (embeddings left out; GET /subjects/{id}/export?include_embeddings=true has them).
async function exportSubject(subjectId) {
  const { ok, status, data } = await api("GET", inCollection(`/subjects/${encodeURIComponent(subjectId)}/export`));
  if (!ok) { $("subjects-status").textContent = problemText(data, status); return; }
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `${subjectId}-export.json` });
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  $("subjects-status").textContent =
    `Exported ${subjectId}: ${data.faces.length} face(s), ${data.audit_events.length} audit event(s).`;
}

function confirmDelete(li, subjectId) {
  const box = el("span");
  const yes = el("button", { type: "button", class: "danger" }, `Yes, delete ${subjectId}`);
  const no = el("button", { type: "button", class: "secondary" }, "Cancel");
  box.append(el("span", { role: "alert" }, "Delete every face of this subject? "), yes, no);
  li.replaceChildren(box);
  yes.focus();
  no.addEventListener("click", () => refreshSubjects());
  yes.addEventListener("click", async () => {
    const { ok, status, data } = await api("DELETE", inCollection(`/subjects/${encodeURIComponent(subjectId)}`));
    await refreshSubjects();
    $("subjects-status").textContent = ok
      ? `Deleted ${subjectId} (${data.faces_deleted} face(s)).` : problemText(data, status);
  });
}
$("subjects-form").addEventListener("submit", (e) => { e.preventDefault(); refreshSubjects(); });

showKeyStatus();
if (sessionStorage.getItem(KEY)) {
  refreshCollections();
} else {
  $("subjects-status").textContent = "Set an API key (above) to list subjects.";
  document.querySelector("details.apikey").open = true;
}
