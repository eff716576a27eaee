// Runs WebRTC data channels through veil in headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded). Meant to run inside a network
// namespace that has only `lo` (tests/browser.rs sets it up), so nothing can leave the machine.
//
//   node run.mjs '<json>'   with json = {"scenarios": [{"name", "iceServers", "iceServersB"?,
//                                       "policyB"?}], "messages": N}
//
// Serves the page on 127.0.0.1, opens two RTCPeerConnections in it that may use only the given
// ICE servers (iceTransportPolicy "relay"; the second one its own, iceServersB, when given: the
// two parties on two relays; with policyB "all" and no servers, the second party reaches the
// first's relayed address from its host address, as a peer outside the relay does), sends N messages over a data channel, and prints one
// JSON line per scenario: messages received, their order, the selected candidate pair from
// getStats(). Exits 0 even when a scenario fails: the test decides.

import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const config = JSON.parse(process.argv[2]);

const PAGE = `<!doctype html><meta charset="utf-8"><title>veil browser test</title>
<script>
async function relayChat(iceServers, n, iceServersB, policyB) {
  // Chromium gathers host candidates on every interface only for a page that may capture media
  // (otherwise only on the default route's, which a test namespace does not have).
  if (policyB === 'all') (await navigator.mediaDevices.getUserMedia({ audio: true })).getTracks().forEach((t) => t.stop());
  const a = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
  const b = new RTCPeerConnection({ iceServers: iceServersB || iceServers, iceTransportPolicy: policyB || 'relay' });
  const candidates = { a: [], b: [] };
  a.onicecandidate = (e) => { if (e.candidate) { candidates.a.push(e.candidate.candidate); b.addIceCandidate(e.candidate); } };
  b.onicecandidate = (e) => { if (e.candidate) { candidates.b.push(e.candidate.candidate); a.addIceCandidate(e.candidate); } };
  const channel = a.createDataChannel('veil');
  const got = [];
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out: ' + got.length + ' of ' + n + ' messages, ice '
      + a.iceConnectionState + '/' + b.iceConnectionState + ', candidates ' + JSON.stringify(candidates))), 25000);
  });
  const all = new Promise((resolve) => {
    b.ondatachannel = (e) => {
      e.channel.onmessage = (m) => { got.push(m.data); if (got.length === n) resolve(); };
    };
  });
  const opened = new Promise((resolve) => { channel.onopen = resolve; });
  try {
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    await Promise.race([opened, timeout]);
    for (let i = 0; i < n; i++) channel.send('message ' + i);
    await Promise.race([all, timeout]);
  } finally {
    clearTimeout(timer);
  }
  // The selected pair can still show a check in flight right after the messages arrive; give
  // its state up to 2 s to settle.
  let stats, pair = null;
  for (let i = 0; i < 20; i++) {
    stats = await a.getStats();
    pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (pair && pair.state === 'succeeded') break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const local = pair && stats.get(pair.localCandidateId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  a.close(); b.close();
  return {
    received: got.length,
    inOrder: got.every((m, i) => m === 'message ' + i),
    pairState: pair && pair.state,
    local: local && { candidateType: local.candidateType, relayProtocol: local.relayProtocol, protocol: local.protocol, address: local.address },
    remote: remote && { candidateType: remote.candidateType, relayProtocol: remote.relayProtocol, address: remote.address },
    candidates: candidates.a.length + candidates.b.length,
  };
}
</script>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(PAGE);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${server.address().port}/`;

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'veil-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic',
    // Without it Chromium gathers no candidates on loopback, and says nothing.
    '--allow-loopback-in-peer-connection',
    ...(config.chromiumArgs || []),
  ],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  for (const s of config.scenarios) {
    let result;
    try {
      result = await page.evaluate(([servers, n, serversB, policyB]) => relayChat(servers, n, serversB, policyB),
        [s.iceServers, config.messages, s.iceServersB || null, s.policyB || null]);
    } catch (e) {
      result = { error: String(e.message || e) };
    }
    console.log(JSON.stringify({ scenario: s.name, ...result }));
  }
  if (config.visit) {
    // A page load from the same profile: what a browser gets from the port.
    const site = await browser.newPage();
    try {
      const resp = await site.goto(config.visit);
      console.log(JSON.stringify({ visit: config.visit, status: resp.status(), body: await resp.text() }));
    } catch (e) {
      console.log(JSON.stringify({ visit: config.visit, error: String(e.message || e) }));
    }
  }
} finally {
  await browser.close();
  server.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
