//! The forwarding path (zero-copy): read into a pooled buffer, decode and
//! unmask in place, rewrite each forwarded frame's header in place, and
//! `writev` the resulting byte ranges to the peer. The session core decides,
//! per frame, whether it is forwarded (`session::Registry::frame_begins`).

use super::*;

impl Server {
    /// Move bytes for connection `key` until nothing more can be done now:
    /// read, decode, forward to the peer, and flush our own frames to `key`.
    pub(super) fn pump(&mut self, key: usize) -> Step {
        loop {
            if !matches!(self.conns[key].state, State::Open { .. }) {
                return Ok(());
            }
            self.compact(key);
            let mut progress = self.read_inbound(key)?;
            progress |= self.decode(key);
            if let Some(peer) = self.peer(key) {
                progress |= self.write_to(peer)?;
            }
            self.write_to(key)?;
            // Space freed by the peer's progress lets us read again.
            progress |= self.compact(key) && self.conns[key].readable;
            if !progress {
                // Only once nothing more can be decoded or written does an
                // ending connection leave: bytes it sent before its close
                // or EOF (beyond what one round of segments holds) still
                // reach the peer.
                if self.try_finish_ending(key) {
                    return Ok(());
                }
                break;
            }
        }
        self.release_idle_buffer(key);
        Ok(())
    }

    /// Read into `key`'s buffer while there is room. Returns whether bytes came.
    pub(super) fn read_inbound(&mut self, key: usize) -> io::Result<bool> {
        let conn = &mut self.conns[key];
        // Shutting down: read only to finish a frame being forwarded, so
        // that its receiver can still get a close frame after it.
        let draining = self.shutting_down.is_some() && !forwarding_a_frame(conn);
        if !conn.readable || conn.ending.is_some() || draining {
            return Ok(false);
        }
        let inb = conn
            .inb
            .as_mut()
            .expect("open connection has inbound state");
        let want = inb.sizer.want();
        // An empty buffer may change size between rounds: nothing to copy.
        let buf = match inb.buf.take() {
            Some(buf) if inb.filled == 0 && buf.segs.is_empty() => self.pool.resize(buf, want),
            Some(buf) => buf,
            None => self.pool.get(want),
        };
        let buf = inb.buf.insert(buf);
        if let Some(stash) = inb.stash.take() {
            buf.data[..stash.len()].copy_from_slice(&stash);
            inb.filled = stash.len();
        }
        let len = buf.data.len();
        let room_at_start = len - inb.filled;
        if room_at_start == 0 {
            return Ok(false);
        }
        let mut got = 0;
        let came = loop {
            let room = len - inb.filled;
            match conn.sock.read(&mut buf.data[inb.filled..]) {
                Ok(0) => {
                    conn.ending = Some(Ending::Vanished("closed the connection".into()));
                    break true;
                }
                Ok(n) => {
                    inb.filled += n;
                    got += n;
                    conn.live.heard(self.now);
                    // A short read drained the socket (epoll(7)): skip the
                    // read that would only say EAGAIN; the next arrival
                    // raises a new edge. Unless the peer's FIN is already
                    // in: no edge will follow it, so read on to EOF.
                    // Under TLS a short read says nothing about the socket.
                    let tls = conn.sock.is_tls();
                    if n < room && !conn.peer_fin && !tls {
                        conn.readable = false;
                    }
                    if n < room && (conn.peer_fin || tls) {
                        continue;
                    }
                    break true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    break got > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    conn.ending = Some(Ending::Vanished(format!("read error: {e}")));
                    break true;
                }
            }
        };
        inb.sizer
            .on_read(self.pool.classes(), got, room_at_start, len);
        Ok(came)
    }

    /// Run the decoder over `key`'s unparsed bytes, turning data frames into
    /// output segments for the peer and handling control frames. Returns
    /// whether anything was consumed.
    pub(super) fn decode(&mut self, key: usize) -> bool {
        let mut progress = false;
        loop {
            let State::Open { member, session } = self.conns[key].state else {
                return progress;
            };
            let conn = &mut self.conns[key];
            if matches!(conn.ending, Some(Ending::Closed(..) | Ending::Failed(..))) {
                return progress;
            }
            let Some(inb) = conn.inb.as_mut() else {
                return progress;
            };
            let Some(buf) = inb.buf.as_mut() else {
                return progress;
            };
            if inb.parsed == inb.filled || buf.segs.len() >= MAX_SEGS {
                return progress;
            }
            let at = inb.parsed;
            let (event, n) = match inb.decoder.decode(&mut buf.data[at..inb.filled]) {
                Ok(Some(item)) => item,
                Ok(None) => return progress,
                Err(e) => {
                    self.metrics.protocol_errors += 1;
                    let code = e.close_code();
                    let reason = e.to_string();
                    log::info!(
                        "{} broke the protocol: {reason} (closing with {code})",
                        conn.addr
                    );
                    self.fail(key, code, &reason);
                    return true;
                }
            };
            inb.parsed += n;
            progress = true;
            match event {
                Event::DataHeader(h) => {
                    let continuation = h.opcode == OpCode::Continuation;
                    let target =
                        self.sessions
                            .frame_begins(session, member, continuation, &mut inb.fwd);
                    if target.is_some() {
                        let out = FrameHeader { mask: None, ..h };
                        let hl = out.encoded_len();
                        let end = at + n;
                        out.encode(&mut buf.data[end - hl..end]);
                        push_seg(&mut buf.segs, end - hl, end, h.payload_len == 0);
                        self.metrics.frames_forwarded += 1;
                    } else {
                        self.metrics.frames_dropped += 1;
                    }
                }
                Event::Payload {
                    len, frame_done, ..
                } => {
                    let target = self
                        .sessions
                        .payload_continues(session, member, &mut inb.fwd);
                    if target.is_some() {
                        push_seg(&mut buf.segs, at, at + len, frame_done);
                        match member {
                            Member::Origin => self.metrics.bytes_origin_to_dest += len as u64,
                            Member::Dest => self.metrics.bytes_dest_to_origin += len as u64,
                        }
                    }
                }
                Event::Control(h) => {
                    let plen = h.payload_len as usize;
                    let payload_at = at + n - plen;
                    let mut payload = [0u8; frame::MAX_CONTROL_PAYLOAD];
                    payload[..plen].copy_from_slice(&buf.data[payload_at..at + n]);
                    let payload = &payload[..plen];
                    match h.opcode {
                        OpCode::Ping => {
                            // Only the latest ping is answered (shared
                            // endpoint policy): a ping flood costs one slot.
                            let conn = &mut self.conns[key];
                            let owed = conn.pong.as_deref().map(endpoint::slot_payload);
                            if conn.policy.answers_pings() && endpoint::replaces_pong(owed, payload)
                            {
                                match conn.pong.as_deref_mut() {
                                    Some(slot) => *slot = endpoint::pong_slot(payload),
                                    None => {
                                        conn.pong = Some(Box::new(endpoint::pong_slot(payload)))
                                    }
                                }
                            }
                        }
                        OpCode::Pong if member == Member::Origin => {
                            self.sessions.origin_pong(session, payload);
                        }
                        OpCode::Close => {
                            // The decoder validated the payload (code and
                            // UTF-8, RFC 6455 §7.1.5) before handing it over.
                            let (code, reason) = match frame::parse_close(payload) {
                                Ok(Some((code, reason))) => (code, reason.to_string()),
                                _ => (close::NO_STATUS, String::new()),
                            };
                            let conn = &mut self.conns[key];
                            conn.policy
                                .on_close((code != close::NO_STATUS).then_some(code));
                            conn.pong = None;
                            conn.ending = Some(Ending::Closed(code, reason));
                            return true;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Write to connection `peer`: first any relay frames (at a frame
    /// boundary), then the peer's pending segments. Returns whether any
    /// bytes were written.
    pub(super) fn write_to(&mut self, peer: usize) -> io::Result<bool> {
        let mut progress = false;
        loop {
            let conn = &mut self.conns[peer];
            if !conn.writable {
                return Ok(progress);
            }
            // The owed pong goes into `ctrl` only when it can go out next
            // (between frames, with room): until then a later ping
            // replaces it instead of queueing another.
            let queued = conn.ctrl.len() - conn.ctrl_pos;
            if conn.pong.is_some()
                && !conn.fwd_mid_frame
                && endpoint::room_for_pong(&CONTROL_LIMITS, queued)
            {
                if let Some(slot) = conn.pong.take() {
                    let payload = endpoint::slot_payload(&slot);
                    frame::encode_frame(&mut conn.ctrl, true, OpCode::Pong, None, payload);
                }
            }
            // Relay frames go out when the forwarded stream is between
            // frames, or when one of them is already half written.
            if conn.ctrl_pos < conn.ctrl.len() && (conn.ctrl_pos > 0 || !conn.fwd_mid_frame) {
                match conn.sock.write(&conn.ctrl[conn.ctrl_pos..]) {
                    Ok(n) => {
                        if n < conn.ctrl.len() - conn.ctrl_pos {
                            // A short write filled the socket (epoll(7)).
                            conn.writable = false;
                        }
                        conn.ctrl_pos += n;
                        progress |= n > 0;
                        if conn.ctrl_pos == conn.ctrl.len() {
                            conn.ctrl = Vec::new();
                            conn.ctrl_pos = 0;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.writable = false;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // `peer` failed, not whoever is writing to it: let `peer`'s
                        // own pump end it.
                        conn.writable = false;
                        conn.ending
                            .get_or_insert(Ending::Vanished(format!("write error: {e}")));
                        self.wake.push((peer, conn.generation));
                        return Ok(progress);
                    }
                }
            }
            let Some(key) = self.peer(peer) else {
                return Ok(progress);
            };
            let (sender, receiver) = match self.conns.get2_mut(key, peer) {
                Some(pair) => pair,
                None => return Ok(progress),
            };
            let Some(inb) = sender.inb.as_mut() else {
                return Ok(progress);
            };
            let Some(buf) = inb.buf.as_mut() else {
                return Ok(progress);
            };
            if buf.segs.is_empty() {
                return Ok(progress);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SEGS];
            let count = buf.segs.len();
            for (i, seg) in buf.segs.iter().enumerate() {
                let start = seg.start as usize + if i == 0 { inb.seg_off } else { 0 };
                slices[i] = IoSlice::new(&buf.data[start..seg.end as usize]);
            }
            let wanted: usize = slices[..count].iter().map(|s| s.len()).sum();
            match receiver.sock.write_vectored(&slices[..count]) {
                Ok(mut n) => {
                    if n < wanted {
                        // A short write filled the socket (epoll(7)): the
                        // next write would only say EAGAIN.
                        receiver.writable = false;
                    }
                    if n > 0 {
                        progress = true;
                        receiver.live.accepted(self.now);
                    }
                    let mut done = 0;
                    for seg in buf.segs.iter() {
                        let left = (seg.end - seg.start) as usize
                            - if done == 0 { inb.seg_off } else { 0 };
                        if n >= left {
                            n -= left;
                            done += 1;
                            inb.seg_off = 0;
                            receiver.fwd_mid_frame = !seg.ends_frame;
                        } else {
                            inb.seg_off += n;
                            if n > 0 {
                                receiver.fwd_mid_frame = true;
                            }
                            break;
                        }
                    }
                    buf.segs.drain(..done);
                    if n == 0 && done == 0 && count > 0 && inb.seg_off == 0 {
                        // Nothing written though the socket said writable.
                        return Ok(progress);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    receiver.writable = false;
                    return Ok(progress);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The receiver failed: let its own pump end it.
                    receiver.writable = false;
                    receiver
                        .ending
                        .get_or_insert(Ending::Vanished(format!("write error: {e}")));
                    self.wake.push((peer, receiver.generation));
                    return Ok(progress);
                }
            }
        }
    }

    /// Reclaim buffer space once the segments have gone out.
    /// Returns whether it made room in a buffer that was full.
    pub(super) fn compact(&mut self, key: usize) -> bool {
        let Some(inb) = self.conns[key].inb.as_mut() else {
            return false;
        };
        let Some(buf) = inb.buf.as_mut() else {
            return false;
        };
        if !buf.segs.is_empty() || inb.parsed == 0 {
            return false;
        }
        let was_full = inb.filled == buf.data.len();
        if inb.parsed == inb.filled {
            inb.parsed = 0;
            inb.filled = 0;
        } else if was_full {
            // Only an incomplete header or control frame (at most 139
            // bytes) can be left unparsed here: payload is always consumed.
            buf.data.copy_within(inb.parsed..inb.filled, 0);
            inb.filled -= inb.parsed;
            inb.parsed = 0;
        }
        was_full
    }

    pub(super) fn release_idle_buffer(&mut self, key: usize) {
        let Some(inb) = self.conns[key].inb.as_mut() else {
            return;
        };
        let Some(buf) = inb.buf.as_ref() else {
            return;
        };
        let unparsed = inb.filled - inb.parsed;
        if !buf.segs.is_empty() || unparsed > frame::MAX_CONTROL_FRAME_LEN {
            return;
        }
        // An idle connection keeps at most an incomplete header or control
        // frame, in a small allocation of its own, not a pooled buffer: a
        // client trickling one byte must not pin a whole buffer.
        if unparsed > 0 {
            inb.stash = Some(buf.data[inb.parsed..inb.filled].into());
        }
        inb.filled = 0;
        inb.parsed = 0;
        if let Some(buf) = inb.buf.take() {
            self.pool.put(buf);
        }
    }
}

/// `conn` is inside a data frame that is being forwarded to its peer.
pub(super) fn forwarding_a_frame(conn: &Conn) -> bool {
    conn.inb
        .as_ref()
        .is_some_and(|i| i.fwd.frame && i.decoder.in_frame())
}

/// Append a segment, merging it with the previous one when contiguous.
pub(super) fn push_seg(segs: &mut Vec<Seg>, start: usize, end: usize, ends_frame: bool) {
    if let Some(last) = segs.last_mut() {
        if last.end as usize == start && !last.ends_frame {
            last.end = end as u32;
            last.ends_frame = ends_frame;
            return;
        }
    }
    segs.push(Seg {
        start: start as u32,
        end: end as u32,
        ends_frame,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_merge_only_within_a_frame() {
        let mut segs = Vec::new();
        push_seg(&mut segs, 2, 4, false); // header
        push_seg(&mut segs, 4, 10, true); // payload ends the frame
        push_seg(&mut segs, 12, 14, false); // next header, after a 2-byte gap
        push_seg(&mut segs, 14, 20, false);
        assert_eq!(
            segs,
            vec![
                Seg {
                    start: 2,
                    end: 10,
                    ends_frame: true
                },
                Seg {
                    start: 12,
                    end: 20,
                    ends_frame: false
                },
            ]
        );
    }
}
