// The console's only script: the task page's live log, ticking heartbeat ages, and
// dashboard counts that refresh. Every page works without it.
"use strict";

function ageText(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function tickAges() {
  const now = Date.now() / 1000;
  for (const el of document.querySelectorAll(".age[data-since]")) {
    el.textContent = ageText(Math.max(0, now - Number(el.dataset.since)));
  }
}

function followTask(section) {
  const id = section.dataset.taskId;
  const log = document.getElementById("log");
  const status = document.getElementById("task-status");
  const progress = document.getElementById("task-progress");
  const message = document.getElementById("task-progress-message");
  const url = "/api/tasks/" + encodeURIComponent(id) + "/events?offset=" + section.dataset.offset;
  const events = new EventSource(url);
  events.addEventListener("log", (e) => {
    // textContent, never innerHTML: a log line is the task's text, not markup.
    log.append(document.createTextNode(JSON.parse(e.data).text));
    log.scrollTop = log.scrollHeight;
  });
  events.addEventListener("task", (e) => {
    const t = JSON.parse(e.data);
    status.textContent = t.status;
    status.className = "status s-" + t.status.toLowerCase();
    progress.value = t.progress;
    message.textContent = t.progress_message;
  });
  events.addEventListener("end", () => {
    events.close();
    // The server renders the final state: the result link, the whole history.
    setTimeout(() => window.location.reload(), 300);
  });
  events.addEventListener("error", () => {
    if (events.readyState === EventSource.CLOSED) section.dataset.live = "0";
  });
}

async function refreshStats() {
  try {
    const reply = await fetch("/api/stats", { credentials: "same-origin" });
    if (!reply.ok) return;
    const stats = await reply.json();
    for (const el of document.querySelectorAll("[data-stat]")) {
      if (el.dataset.stat in stats) el.textContent = stats[el.dataset.stat];
    }
  } catch (err) {
    // The next refresh tries again.
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("task");
  if (section && section.dataset.live === "1") followTask(section);
  if (document.querySelector(".age[data-since]")) setInterval(tickAges, 1000);
  if (document.getElementById("stats")) setInterval(refreshStats, 5000);
});
