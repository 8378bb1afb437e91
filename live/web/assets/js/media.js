// WHIP publishing and WHEP playback (RFC 9725 and the WHEP draft; docs/media.md): one offer with all
// our ICE candidates (no trickle), the answer back, DELETE on the session's Location to end it.
import { ApiError } from './api.js';

const GATHER_MS = 2500;

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, GATHER_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') {
        clearTimeout(t);
        resolve();
      }
    });
  });
}

async function negotiate(pc, url, token) {
  await pc.setLocalDescription(await pc.createOffer());
  await gathered(pc);
  const headers = { 'Content-Type': 'application/sdp' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let r;
  try {
    r = await fetch(url, { method: 'POST', headers, body: pc.localDescription.sdp });
  } catch {
    throw new ApiError(0, { error: 'network', message: 'the server cannot be reached' });
  }
  const text = await r.text();
  if (r.status !== 201) {
    let body;
    try {
      body = JSON.parse(text);
    } catch {
      body = { error: 'http_error', message: text.slice(0, 200) };
    }
    throw new ApiError(r.status, body, r.headers);
  }
  await pc.setRemoteDescription({ type: 'answer', sdp: text });
  return r.headers.get('Location');
}

class Session {
  constructor(pc, location, token) {
    this.pc = pc;
    this.location = location;
    this.token = token;
  }

  async stop() {
    const loc = this.location;
    this.location = null;
    this.pc.close();
    if (loc) {
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      await fetch(new URL(loc, location.href), { method: 'DELETE', headers }).catch(() => {});
    }
  }
}

// Plays a stream's video into `video`. Throws ApiError (409 no_publisher while nobody publishes).
export async function play(streamId, video, { onEnded } = {}) {
  const pc = new RTCPeerConnection();
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.addTransceiver('audio', { direction: 'recvonly' });
  const media = new MediaStream();
  pc.addEventListener('track', (e) => {
    media.addTrack(e.track);
    video.srcObject = media;
    e.track.addEventListener('ended', () => onEnded && onEnded());
  });
  pc.addEventListener('connectionstatechange', () => {
    if (['failed', 'closed'].includes(pc.connectionState) && onEnded) onEnded();
  });
  try {
    const loc = await negotiate(pc, `/whep/${encodeURIComponent(streamId)}`, null);
    return new Session(pc, loc, null);
  } catch (e) {
    pc.close();
    throw e;
  }
}

// Publishes a camera MediaStream as the stream's video (host token).
export async function publish(streamId, stream, token) {
  const pc = new RTCPeerConnection();
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
  try {
    const loc = await negotiate(pc, `/whip/${encodeURIComponent(streamId)}`, token);
    return new Session(pc, loc, token);
  } catch (e) {
    pc.close();
    throw e;
  }
}
