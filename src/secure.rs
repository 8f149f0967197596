//! End-to-end security between origin and dest.
//!
//! From the token (a secret only origin and dest know) and the session id,
//! derive (a) an admission value the relay compares to let a dest into the
//! session, and (b) a pre-shared key for a Noise NNpsk0 handshake, so origin
//! and dest authenticate each other and encrypt the mux stream end to end.
//! The relay sees only (a) and cannot turn it into (b) or the token.
//!
//! # Construction (docs/SECURITY.md has the full argument)
//!
//! ```text
//! prk        = HKDF-Extract(salt = session id (16 bytes), ikm = token bytes)
//! admission  = base64url(HKDF-Expand(prk, "sockrelay v1 admission", 32))
//! psk        =           HKDF-Expand(prk, "sockrelay v1 e2e psk",   32)
//! protocol   = Noise_NNpsk0_25519_ChaChaPoly_SHA256
//! prologue   = "sockrelay v1 noise" || session id (16 bytes)
//! dest   = initiator:  -> psk, e            (48 bytes: e + empty payload tag)
//! origin = responder:  <- e, ee             (48 bytes, or 53: see below)
//! ```
//!
//! # Transport cipher negotiation (v2)
//!
//! A previous-version (v1) peer rejects any handshake payload, so the dest
//! cannot put an advertisement in message 1. It signals instead in the one
//! bit of message 1 that v1 origins ignore but that is authenticated: the
//! top bit of its ephemeral key. X25519 masks bit 255 of a u-coordinate
//! (RFC 7748 §5; curve25519-dalek's `FieldElement::from_bytes`), so the DH
//! result is unchanged, while Noise hashes the 32 bytes as sent (MixHash and,
//! with psk, MixKey). Flipping the bit in flight therefore breaks message
//! 1's tag, as any other change does.
//!
//! ```text
//! msg 1, bit 255 of e set   = "v2 dest, offers AES-256-GCM and ChaCha20-Poly1305"
//! msg 1, bit 255 of e clear = v1 dest, or a v2 dest offering only ChaCha
//! msg 2 payload (v2 origin, only when the bit was set, 5 bytes, AEAD-protected):
//!     "SR" 0x02 <chosen: 1 = ChaCha20-Poly1305, 2 = AES-256-GCM> <origin's mask: bit0 ChaCha, bit1 AES>
//! msg 2 payload empty       = v1 origin (or the bit was clear): Noise ChaChaPoly as in v1
//! ```
//!
//! A relay can neither clear nor set the bit (message 1 fails), nor strip
//! or alter message 2's payload (message 2 fails), so it cannot force the
//! slower suite between two v2 peers that both offer AES. When v2 was
//! negotiated the transport keys are derived from the finished handshake:
//!
//! ```text
//! (k_do, k_od) = Noise Split (snow's raw split; k_do is dest -> origin)
//! secret_0     = HKDF(salt = handshake hash h, ikm = k_dir,
//!                     info = "sockrelay v2 transport " || cipher || " " || dir)
//! key_i        = HKDF-Expand(secret_i, "sockrelay v2 key", 32)
//! secret_i+1   = HKDF-Expand(secret_i, "sockrelay v2 next", 32)
//! nonce        = 0u32 || message counter (u64, big-endian)
//! ```
//!
//! with epoch i = counter / [`REKEY_MESSAGES`]: each direction rekeys every
//! 2^20 messages (at most 64 GiB), far inside AES-GCM's limit for 64 KiB
//! messages (TLS 1.3's 2^24.5 records of 16 KiB scaled to 2^22.5 of 64 KiB)
//! and ChaCha20-Poly1305's. The counter never resets, so a nonce never
//! repeats under one key, and a replayed, reordered or dropped-before
//! message fails as in v1. Without v2 the session is exactly v1 (snow's
//! transport).
//!
//! `SOCKRELAY_CIPHER=auto|aes|chacha` (default `auto`) picks the offer:
//! `auto` offers AES only with hardware AES (x86 AES-NI + PCLMULQDQ, ARMv8
//! AES + PMULL) and the origin chooses AES only when it has it too; `aes`
//! offers and chooses AES even without it, and fails the handshake if the
//! peer does not agree; `chacha` never offers AES (a v1-format handshake).
//!
//! The token is used as the bytes it is given (typically the UTF-8 text of a
//! base64url string); it is never decoded.
//!
//! # Use
//!
//! One [`Noise`] per WebSocket connection between a dest and an origin: the
//! dest makes a new one each time it (re)joins, the origin a new one on each
//! `peer-joined`. Any error from [`Noise::handshake_in`] or [`Noise::open`]
//! is final: the state is poisoned and every later call fails with
//! [`Error::Failed`]. The caller drops the connection. [`Noise::cipher`]
//! says what was negotiated (also logged at info level).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use ring::aead::{self, LessSafeKey, UnboundKey};
use sha2::Sha256;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher as SnowCipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};
use uuid::Uuid;

/// Largest plaintext one sealed message may carry (Noise limit 65535 minus
/// the 16-byte tag).
pub const MAX_PLAINTEXT: usize = 65535 - 16;
/// Tokens shorter than this get a warning (they can be guessed offline by
/// whoever sees an admission value or a handshake: README "Security").
pub const MIN_TOKEN_LEN: usize = 16;

/// Bytes [`Noise::seal`] adds to a plaintext (the Poly1305 tag).
pub const SEAL_OVERHEAD: usize = 16;
/// Largest message [`Noise::open`] accepts (the Noise limit).
pub const MAX_MESSAGE: usize = 65535;
/// Length of message 1, and of message 2 in the v1 format (an ephemeral
/// public key and the tag of an empty payload).
pub const HANDSHAKE_MSG_LEN: usize = 32 + 16;
/// Length of message 2 when the origin answers a v2 offer.
pub const HANDSHAKE_MSG2_V2_LEN: usize = HANDSHAKE_MSG_LEN + OFFER_LEN;
/// Each direction of a v2 transport derives a new key after this many
/// messages (module docs).
pub const REKEY_MESSAGES: u64 = 1 << 20;

/// The Noise protocol. SHA256 rather than BLAKE2s: `sha2` is linked anyway
/// (HKDF), so snow needs no second hash.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

const PROLOGUE_PREFIX: &[u8] = b"sockrelay v1 noise";
const INFO_ADMISSION: &[u8] = b"sockrelay v1 admission";
const INFO_PSK: &[u8] = b"sockrelay v1 e2e psk";
const TOKEN_BYTES: usize = 32;
/// Bit 255 of the dest's ephemeral key: "v2, offers AES-256-GCM".
const OFFER_BIT: u8 = 0x80;
const OFFER_MAGIC: &[u8; 3] = b"SR\x02";
const OFFER_LEN: usize = 5;
const INFO_TRANSPORT: &[u8] = b"sockrelay v2 transport ";
const INFO_KEY: &[u8] = b"sockrelay v2 key";
const INFO_NEXT: &[u8] = b"sockrelay v2 next";
/// Environment variable that forces the cipher offer (module docs).
pub const CIPHER_ENV: &str = "SOCKRELAY_CIPHER";

/// Errors. None carries key material, plaintext or peer bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The OS random source failed.
    Rng,
    /// An empty token was given.
    EmptyToken,
    /// `seal` got more than [`MAX_PLAINTEXT`] bytes, or `open` more than
    /// [`MAX_MESSAGE`]. Nothing was consumed; the state is unchanged.
    TooLarge,
    /// A call that does not fit the current phase (a handshake call after
    /// the handshake, `seal`/`open` before it, writing out of turn).
    WrongPhase,
    /// The peer's handshake message did not verify: the peer does not know
    /// the token, is in another session, or the message was altered.
    Handshake,
    /// A transport message did not verify: altered, truncated, replayed,
    /// reordered, reflected, or one was dropped before it.
    Decrypt,
    /// 2^64 - 1 messages in one direction: the connection must be replaced.
    NonceExhausted,
    /// An earlier error poisoned this state; make a new connection.
    Failed,
    /// snow refused something we did not expect it to (a bug here).
    Internal,
    /// `SOCKRELAY_CIPHER=aes` and the peer did not agree on AES-256-GCM.
    CipherRefused,
    /// `SOCKRELAY_CIPHER` is set to something other than auto, aes, chacha.
    CipherEnv,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::Rng => "the OS random number generator failed",
            Error::EmptyToken => "the token is empty",
            Error::TooLarge => "message too large for one Noise message",
            Error::WrongPhase => "secure channel used out of order",
            Error::Handshake => {
                "end-to-end handshake failed: the peer does not know the token, \
                 is in another session, or the message was altered"
            }
            Error::Decrypt => {
                "end-to-end message failed authentication (altered, replayed, \
                 reordered, reflected or truncated)"
            }
            Error::NonceExhausted => "end-to-end nonce space exhausted",
            Error::Failed => "secure channel already failed",
            Error::Internal => "internal error in the Noise layer",
            Error::CipherRefused => {
                "SOCKRELAY_CIPHER=aes, but the peer did not agree on AES-256-GCM"
            }
            Error::CipherEnv => "SOCKRELAY_CIPHER must be auto, aes or chacha",
        })
    }
}
impl std::error::Error for Error {}

/// A fresh high-entropy token (256 bits, base64url without padding).
///
/// # Panics
///
/// When the OS random source fails (see [`try_generate_token`]): a weak
/// token must never be produced silently.
pub fn generate_token() -> String {
    try_generate_token().expect("no OS randomness: cannot generate a token")
}

/// [`generate_token`] that reports a failing random source instead of
/// panicking. Uses the OS CSPRNG (getrandom(2)) through snow's resolver.
pub fn try_generate_token() -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    let mut rng = DefaultResolver.resolve_rng().ok_or(Error::Rng)?;
    rng.try_fill_bytes(&mut bytes).map_err(|_| Error::Rng)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    wipe(&mut bytes);
    Ok(token)
}

/// True when `token` is shorter than [`MIN_TOKEN_LEN`] bytes; the caller
/// should warn that it can be brute-forced offline (docs/SECURITY.md).
/// Length is only a proxy: a long but guessable passphrase is weak too.
pub fn token_is_short(token: &[u8]) -> bool {
    token.len() < MIN_TOKEN_LEN
}

/// The admission value for `session`: what origin and dest present to the
/// relay (base64url, no padding). One-way: it reveals neither the token nor
/// the end-to-end key.
///
/// It does allow an offline guessing attack on a low-entropy token (one
/// HKDF evaluation per guess): see docs/SECURITY.md.
pub fn admission(token: &[u8], session: &Uuid) -> String {
    let mut okm = [0u8; 32];
    derive(token, session, INFO_ADMISSION, &mut okm);
    URL_SAFE_NO_PAD.encode(okm)
}

/// HKDF-SHA256(salt = session id, ikm = token) expanded with `info`.
///
/// The extracted PRK lives for the duration of this call inside the `Hkdf`
/// value (an HMAC state); `hkdf` 0.12 does not wipe it on drop.
fn derive(token: &[u8], session: &Uuid, info: &[u8], okm: &mut [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(session.as_bytes()), token);
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: cannot fail.
    hk.expand(info, okm)
        .expect("HKDF-SHA256 expand of 32 bytes cannot fail");
}

/// Best-effort wipe of a secret we own (volatile writes the optimiser may
/// not drop). Copies held by snow and by HKDF's internal state are outside
/// our reach: see [`Noise::new`].
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Which end of the Noise handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dest initiates.
    Dest,
    /// The origin responds.
    Origin,
}

/// A transport cipher of the end-to-end layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    ChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    /// The name logged and shown in the README.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Cipher::Aes256Gcm => "AES-256-GCM",
        }
    }
    fn id(self) -> u8 {
        match self {
            Cipher::ChaCha20Poly1305 => 1,
            Cipher::Aes256Gcm => 2,
        }
    }
    fn from_id(id: u8) -> Option<Cipher> {
        match id {
            1 => Some(Cipher::ChaCha20Poly1305),
            2 => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

/// What this side offers (and, for the origin, chooses): `SOCKRELAY_CIPHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CipherPref {
    /// AES-256-GCM when this CPU has hardware AES, else ChaCha20-Poly1305.
    Auto,
    /// AES-256-GCM or fail (tests and benches).
    Aes,
    /// ChaCha20-Poly1305 only: the v1-format handshake.
    ChaCha,
}

impl CipherPref {
    /// Parse `auto`, `aes` or `chacha` (ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<CipherPref> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "" => Some(CipherPref::Auto),
            "aes" => Some(CipherPref::Aes),
            "chacha" => Some(CipherPref::ChaCha),
            _ => None,
        }
    }

    /// `SOCKRELAY_CIPHER`, `Auto` when unset; read once per process.
    pub fn from_env() -> Result<CipherPref, Error> {
        static PREF: std::sync::OnceLock<Option<CipherPref>> = std::sync::OnceLock::new();
        PREF.get_or_init(|| match std::env::var(CIPHER_ENV) {
            Ok(v) => CipherPref::parse(&v),
            Err(std::env::VarError::NotPresent) => Some(CipherPref::Auto),
            Err(std::env::VarError::NotUnicode(_)) => None,
        })
        .ok_or(Error::CipherEnv)
    }

    /// Whether this side offers (dest) or accepts (origin) AES-256-GCM.
    fn wants_aes(self, hw_aes: bool) -> bool {
        match self {
            CipherPref::Auto => hw_aes,
            CipherPref::Aes => true,
            CipherPref::ChaCha => false,
        }
    }
}

/// True when this CPU has the instructions ring's AES-256-GCM uses to be
/// fast and constant-time without tables (ring 0.17 does not say which
/// implementation it picked, so ask the CPU the same question).
pub fn hardware_aes() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

/// snow's usual resolvers (ring for ChaChaPoly and SHA-256, the default one
/// for X25519 and the RNG), with the dest's ephemeral key optionally
/// marked (module docs).
struct Resolver {
    inner: FallbackResolver,
    mark: bool,
}

impl Resolver {
    fn new(mark: bool) -> Resolver {
        Resolver {
            inner: FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver)),
            mark,
        }
    }
}

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        self.inner.resolve_rng()
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        let dh = self.inner.resolve_dh(choice)?;
        if self.mark {
            Some(Box::new(MarkedDh {
                inner: dh,
                pubkey: [0u8; 32],
            }))
        } else {
            Some(dh)
        }
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        self.inner.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn SnowCipher>> {
        self.inner.resolve_cipher(choice)
    }
}

/// X25519 whose public key is sent with bit 255 set. The DH itself is the
/// inner implementation's, untouched: X25519 ignores that bit on input.
struct MarkedDh {
    inner: Box<dyn Dh>,
    pubkey: [u8; 32],
}

impl MarkedDh {
    fn remark(&mut self) {
        let p = self.inner.pubkey();
        if p.len() == 32 {
            self.pubkey.copy_from_slice(p);
            self.pubkey[31] |= OFFER_BIT;
        }
    }
}

impl Dh for MarkedDh {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn pub_len(&self) -> usize {
        self.inner.pub_len()
    }
    fn priv_len(&self) -> usize {
        self.inner.priv_len()
    }
    fn set(&mut self, privkey: &[u8]) {
        self.inner.set(privkey);
        self.remark();
    }
    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        self.inner.generate(rng)?;
        self.remark();
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.pubkey
    }
    fn privkey(&self) -> &[u8] {
        self.inner.privkey()
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        self.inner.dh(pubkey, out)
    }
}

/// One direction of a v2 transport.
struct Direction {
    cipher: Cipher,
    key: LessSafeKey,
    /// secret_i of the module docs; key is derived from it.
    secret: [u8; 32],
    /// Messages sealed (or opened) so far: the next nonce.
    n: u64,
}

impl Direction {
    fn new(cipher: Cipher, secret: [u8; 32]) -> Result<Direction, Error> {
        let key = Direction::key_of(cipher, &secret)?;
        Ok(Direction {
            cipher,
            key,
            secret,
            n: 0,
        })
    }

    fn key_of(cipher: Cipher, secret: &[u8; 32]) -> Result<LessSafeKey, Error> {
        let mut k = [0u8; 32];
        expand(secret, INFO_KEY, &mut k)?;
        let key = UnboundKey::new(cipher.algorithm(), &k).map_err(|_| Error::Internal);
        wipe(&mut k);
        Ok(LessSafeKey::new(key?))
    }

    /// The nonce for this message, or exhaustion (2^64 - 1 is reserved as
    /// in Noise, so the counter never wraps).
    fn nonce(&self) -> Result<aead::Nonce, Error> {
        if self.n == u64::MAX {
            return Err(Error::NonceExhausted);
        }
        let mut b = [0u8; aead::NONCE_LEN];
        b[4..].copy_from_slice(&self.n.to_be_bytes());
        Ok(aead::Nonce::assume_unique_for_key(b))
    }

    /// Count the message just processed; rekey at each epoch boundary.
    fn advance(&mut self) -> Result<(), Error> {
        self.n += 1;
        if self.n % REKEY_MESSAGES == 0 {
            let mut next = [0u8; 32];
            expand(&self.secret, INFO_NEXT, &mut next)?;
            wipe(&mut self.secret);
            self.secret = next;
            wipe(&mut next);
            self.key = Direction::key_of(self.cipher, &self.secret)?;
        }
        Ok(())
    }
}

impl Drop for Direction {
    fn drop(&mut self) {
        // ring's key schedule is not ours to wipe; the secret is.
        wipe(&mut self.secret);
    }
}

/// The negotiated (v2) transport.
struct Transport {
    send: Direction,
    recv: Direction,
}

impl Transport {
    /// Keys from the finished handshake (module docs).
    fn new(side: Side, cipher: Cipher, hs: &mut HandshakeState) -> Result<Transport, Error> {
        let h = hs.get_handshake_hash().to_vec();
        let (mut k_do, mut k_od) = hs.dangerously_get_raw_split();
        let secret = |ikm: &[u8], dir: &[u8]| -> Result<[u8; 32], Error> {
            let mut info = Vec::with_capacity(64);
            info.extend_from_slice(INFO_TRANSPORT);
            info.extend_from_slice(cipher.name().as_bytes());
            info.push(b' ');
            info.extend_from_slice(dir);
            let mut out = [0u8; 32];
            Hkdf::<Sha256>::new(Some(&h), ikm)
                .expand(&info, &mut out)
                .map_err(|_| Error::Internal)?;
            Ok(out)
        };
        let do_ = secret(&k_do, b"dest to origin");
        let od = secret(&k_od, b"origin to dest");
        wipe(&mut k_do);
        wipe(&mut k_od);
        let (do_, od) = (do_?, od?);
        let (send, recv) = match side {
            Side::Dest => (do_, od),
            Side::Origin => (od, do_),
        };
        Ok(Transport {
            send: Direction::new(cipher, send)?,
            recv: Direction::new(cipher, recv)?,
        })
    }

    fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let nonce = self.send.nonce()?;
        let start = out.len();
        out.extend_from_slice(plaintext);
        match self
            .send
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::empty(), &mut out[start..])
        {
            Ok(tag) => out.extend_from_slice(tag.as_ref()),
            Err(_) => {
                out.truncate(start);
                return Err(Error::Internal);
            }
        }
        self.send.advance()
    }

    fn seal_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        let nonce = self.send.nonce()?;
        let tag = self
            .send
            .key
            .seal_in_place_separate_tag(nonce, aead::Aad::empty(), &mut buf[..])
            .map_err(|_| Error::Internal)?;
        buf.extend_from_slice(tag.as_ref());
        self.send.advance()
    }

    fn open(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let nonce = self.recv.nonce()?;
        let start = out.len();
        out.extend_from_slice(ciphertext);
        match self
            .recv
            .key
            .open_in_place(nonce, aead::Aad::empty(), &mut out[start..])
        {
            Ok(plain) => {
                let n = plain.len();
                out.truncate(start + n);
            }
            Err(_) => {
                // ring leaves the buffer unspecified on failure: drop it all.
                out.truncate(start);
                return Err(Error::Decrypt);
            }
        }
        self.recv.advance()
    }

    fn open_in_place(&mut self, msg: &mut [u8]) -> Result<usize, Error> {
        let nonce = self.recv.nonce()?;
        let n = self
            .recv
            .key
            .open_in_place(nonce, aead::Aad::empty(), msg)
            .map_err(|_| Error::Decrypt)?
            .len();
        self.recv.advance()?;
        Ok(n)
    }
}

/// HKDF-Expand with `prk` (32 bytes, a uniformly random secret) as the PRK.
fn expand(prk: &[u8; 32], info: &[u8], out: &mut [u8; 32]) -> Result<(), Error> {
    Hkdf::<Sha256>::from_prk(prk)
        .and_then(|hk| hk.expand(info, out).map_err(|_| hkdf::InvalidPrkLength))
        .map_err(|_| Error::Internal)
}

enum State {
    Handshake(Box<HandshakeState>),
    /// Previous-version format: snow's ChaChaPoly transport, as in v1.
    V1(Box<TransportState>),
    /// Negotiated: ring AEAD keyed from the split (module docs).
    V2(Box<Transport>),
    Failed,
}

/// Noise_NNpsk0 state: handshake, then transport.
///
/// Dest (initiator): `handshake_out` (message 1), `handshake_in`
/// (message 2) → established. Origin (responder): `handshake_in`
/// (message 1), `handshake_out` (message 2) → established.
///
/// `Debug` shows the side and phase, never keys.
pub struct Noise {
    side: Side,
    state: State,
    pref: CipherPref,
    /// This CPU has hardware AES ([`hardware_aes`]; tests override it).
    hw_aes: bool,
    /// Dest: message 1 carries the v2 offer. Origin: the dest's message 1
    /// carried it, so message 2 answers with the choice.
    v2_offer: bool,
    /// The cipher once known (origin: after message 1; dest: message 2).
    cipher: Option<Cipher>,
    /// The peer has shown it knows the psk (so the token), see
    /// [`Noise::peer_proved_token`].
    peer_proved_token: bool,
    /// The peer has shown it is live in *this* handshake, see
    /// [`Noise::peer_confirmed`].
    peer_confirmed: bool,
    /// Noise handshake hash `h` once the handshake is done: unique to this
    /// handshake (both ephemeral keys and the psk are mixed in), the same
    /// on both sides. The mux v2 resume proof is bound to it.
    handshake_hash: Vec<u8>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.state {
            State::Handshake(_) => "handshake",
            State::V1(_) => "transport v1",
            State::V2(_) => "transport v2",
            State::Failed => "failed",
        };
        f.debug_struct("Noise")
            .field("side", &self.side)
            .field("phase", &phase)
            .field("cipher", &self.cipher)
            .field("peer_proved_token", &self.peer_proved_token)
            .field("peer_confirmed", &self.peer_confirmed)
            .finish_non_exhaustive()
    }
}

fn map_snow(e: snow::Error) -> Error {
    match e {
        snow::Error::Decrypt => Error::Decrypt,
        snow::Error::Rng => Error::Rng,
        snow::Error::State(snow::error::StateProblem::Exhausted) => Error::NonceExhausted,
        snow::Error::State(_) => Error::WrongPhase,
        _ => Error::Internal,
    }
}

impl Noise {
    /// A fresh handshake for `side` in `session`, keyed by the psk derived
    /// from `token`, offering what `SOCKRELAY_CIPHER` says ([`CipherPref`]).
    ///
    /// Our stack copy of the psk is wiped before returning. snow keeps its
    /// own copy inside the handshake state (and makes transient stack
    /// copies while building it); snow 0.10 does not zeroize those, nor
    /// the ephemeral private key or the v1 transport keys. The handshake
    /// state, psk included, is dropped (not wiped) when the handshake ends.
    pub fn new(side: Side, token: &[u8], session: &Uuid) -> Result<Noise, Error> {
        Noise::with_cipher(side, token, session, CipherPref::from_env()?)
    }

    /// [`Noise::new`] with an explicit cipher preference.
    pub fn with_cipher(
        side: Side,
        token: &[u8],
        session: &Uuid,
        pref: CipherPref,
    ) -> Result<Noise, Error> {
        Noise::build(side, token, session, pref, hardware_aes())
    }

    fn build(
        side: Side,
        token: &[u8],
        session: &Uuid,
        pref: CipherPref,
        hw_aes: bool,
    ) -> Result<Noise, Error> {
        if token.is_empty() {
            return Err(Error::EmptyToken);
        }
        let params = NOISE_PARAMS.parse().map_err(|_| Error::Internal)?;
        let mut prologue = [0u8; PROLOGUE_PREFIX.len() + 16];
        prologue[..PROLOGUE_PREFIX.len()].copy_from_slice(PROLOGUE_PREFIX);
        prologue[PROLOGUE_PREFIX.len()..].copy_from_slice(session.as_bytes());

        let v2_offer = side == Side::Dest && pref.wants_aes(hw_aes);
        let mut psk = [0u8; 32];
        derive(token, session, INFO_PSK, &mut psk);
        let built = snow::Builder::with_resolver(params, Box::new(Resolver::new(v2_offer)))
            .prologue(&prologue)
            .and_then(|b| b.psk(0, &psk))
            .and_then(|b| match side {
                Side::Dest => b.build_initiator(),
                Side::Origin => b.build_responder(),
            });
        wipe(&mut psk);
        let hs = built.map_err(map_snow)?;
        Ok(Noise {
            side,
            state: State::Handshake(Box::new(hs)),
            pref,
            hw_aes,
            v2_offer,
            cipher: None,
            peer_proved_token: false,
            peer_confirmed: false,
            handshake_hash: Vec::new(),
        })
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The transport cipher, once the handshake has fixed it.
    pub fn cipher(&self) -> Option<Cipher> {
        self.cipher
    }

    /// True when the cipher was negotiated (v2), false for a v1-format
    /// session (ChaCha20-Poly1305 through snow, as in the previous version).
    pub fn negotiated(&self) -> bool {
        matches!(self.state, State::V2(_))
    }

    /// True when it is our turn to send a handshake message.
    pub fn wants_to_send(&self) -> bool {
        match &self.state {
            State::Handshake(hs) => hs.is_my_turn(),
            _ => false,
        }
    }

    /// Append our next handshake message to `out`.
    pub fn handshake_out(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let hs = match &mut self.state {
            State::Handshake(hs) if hs.is_my_turn() => hs,
            State::Failed => return Err(Error::Failed),
            _ => return Err(Error::WrongPhase),
        };
        // Only the origin's message 2 ever carries a payload: its answer to
        // a v2 offer.
        let mut payload = [0u8; OFFER_LEN];
        let payload: &[u8] = match (self.side, self.v2_offer, self.cipher) {
            (Side::Origin, true, Some(c)) => {
                payload[..3].copy_from_slice(OFFER_MAGIC);
                payload[3] = c.id();
                payload[4] = 1 | if self.pref.wants_aes(self.hw_aes) {
                    2
                } else {
                    0
                };
                &payload
            }
            _ => &[],
        };
        let start = out.len();
        out.resize(start + HANDSHAKE_MSG_LEN + payload.len(), 0);
        match hs.write_message(payload, &mut out[start..]) {
            Ok(n) => out.truncate(start + n),
            Err(e) => {
                out.truncate(start);
                self.state = State::Failed;
                return Err(map_snow(e));
            }
        }
        self.finish_if_done()
    }

    /// Consume the peer's handshake message. Fails when the peer does not
    /// know the token (or the message was tampered with).
    ///
    /// Origin: success on message 1 means the dest knows the psk, see
    /// [`Noise::peer_proved_token`]. Dest: success on message 2 means the
    /// origin knows the psk *and* answered this very handshake.
    pub fn handshake_in(&mut self, msg: &[u8]) -> Result<(), Error> {
        let hs = match &mut self.state {
            State::Handshake(hs) if !hs.is_my_turn() => hs,
            State::Failed => return Err(Error::Failed),
            _ => return Err(Error::WrongPhase),
        };
        // Message 1 has an empty payload; message 2 an empty one or the
        // origin's answer. The buffer only catches a longer payload so we
        // can reject it.
        let mut payload = [0u8; 64];
        let res = if msg.len() > HANDSHAKE_MSG_LEN + payload.len() {
            Err(Error::Handshake)
        } else {
            match hs.read_message(msg, &mut payload) {
                Ok(n) => Ok(n),
                Err(_) => Err(Error::Handshake),
            }
        };
        let res = res.and_then(|n| match self.side {
            Side::Origin => self.read_offer(msg, n),
            Side::Dest => self.read_answer(payload.get(..n).unwrap_or(&[])),
        });
        if let Err(e) = res {
            self.state = State::Failed;
            return Err(e);
        }
        // With NNpsk0 the psk is mixed into the chaining key before the
        // initiator's ephemeral key, so the empty payload of message 1 is
        // AEAD-encrypted under a key that depends on the psk, the prologue
        // (session id) and the initiator's ephemeral key (all 32 bytes of
        // it as sent, so the offer bit too). Its tag verifying here proves
        // the sender knows the psk, hence the token (HKDF is one-way), for
        // this session. It does NOT prove freshness: the message could be a
        // replay of an earlier dest's message 1 for the same session. A
        // replayer still cannot complete anything: it lacks that ephemeral
        // private key, so it can neither read what we send nor produce a
        // transport message we would open (`peer_confirmed`).
        //
        // For the dest, message 2 additionally mixes DH(e_dest, e_origin)
        // with our fresh ephemeral, so it is both authenticated and fresh.
        self.peer_proved_token = true;
        if self.side == Side::Dest {
            self.peer_confirmed = true;
        }
        self.finish_if_done()
    }

    /// Origin: message 1 verified with an `n`-byte payload; note the offer
    /// and choose.
    fn read_offer(&mut self, msg: &[u8], n: usize) -> Result<(), Error> {
        if n != 0 {
            return Err(Error::Handshake);
        }
        self.v2_offer = msg.get(31).is_some_and(|b| b & OFFER_BIT != 0);
        let aes = self.v2_offer && self.pref.wants_aes(self.hw_aes);
        if self.pref == CipherPref::Aes && !aes {
            return Err(Error::CipherRefused);
        }
        self.cipher = Some(if aes {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        });
        Ok(())
    }

    /// Dest: message 2 verified; check the origin's answer.
    fn read_answer(&mut self, payload: &[u8]) -> Result<(), Error> {
        let cipher = match payload {
            [] => Cipher::ChaCha20Poly1305,
            [m0, m1, m2, id, mask] if self.v2_offer && [*m0, *m1, *m2] == *OFFER_MAGIC => {
                let c = Cipher::from_id(*id).ok_or(Error::Handshake)?;
                // The origin must choose what it says it supports.
                let bit = if c == Cipher::Aes256Gcm { 2 } else { 1 };
                if mask & bit == 0 {
                    return Err(Error::Handshake);
                }
                c
            }
            _ => return Err(Error::Handshake),
        };
        if self.pref == CipherPref::Aes && cipher != Cipher::Aes256Gcm {
            return Err(Error::CipherRefused);
        }
        if payload.is_empty() {
            // A v1 origin (or we offered nothing): v1 format.
            self.v2_offer = false;
        }
        self.cipher = Some(cipher);
        Ok(())
    }

    fn finish_if_done(&mut self) -> Result<(), Error> {
        let done = matches!(&self.state, State::Handshake(hs) if hs.is_handshake_finished());
        if !done {
            return Ok(());
        }
        let State::Handshake(mut hs) = std::mem::replace(&mut self.state, State::Failed) else {
            unreachable!()
        };
        self.handshake_hash = hs.get_handshake_hash().to_vec();
        let cipher = self.cipher.unwrap_or(Cipher::ChaCha20Poly1305);
        if self.v2_offer {
            self.state = State::V2(Box::new(Transport::new(self.side, cipher, &mut hs)?));
            log::info!("end-to-end cipher: {} (negotiated)", cipher.name());
        } else {
            let ts = hs.into_transport_mode().map_err(map_snow)?;
            self.state = State::V1(Box::new(ts));
            log::info!(
                "end-to-end cipher: {} (v1 handshake: {})",
                cipher.name(),
                match (self.side, self.pref.wants_aes(self.hw_aes)) {
                    (_, false) => "AES not offered here",
                    (Side::Origin, true) => "the dest offered no AES",
                    (Side::Dest, true) => "the origin is of the previous version",
                }
            );
        }
        Ok(())
    }

    /// The handshake hash (empty until established): a value both sides
    /// share and nobody else can choose, fresh for every handshake.
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::V1(_) | State::V2(_))
    }

    /// True once the state is poisoned by an error; only dropping it helps.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The peer has proved it knows the token (the psk derived from it) for
    /// this session.
    ///
    /// Origin: set by a successful [`Noise::handshake_in`] of message 1 —
    /// the responder's successful read of NNpsk0 message 1 proves the
    /// initiator knows the psk. That message may be a replay (see
    /// [`Noise::peer_confirmed`] for liveness). Dest: set by message 2.
    pub fn peer_proved_token(&self) -> bool {
        self.peer_proved_token && !self.is_failed()
    }

    /// The peer has proved knowledge of the token *in this handshake* (not a
    /// replay). Dest: after message 2. Origin: after the first successful
    /// [`Noise::open`] of a dest transport message, which only the holder of
    /// the ephemeral key of message 1 can produce. The origin should treat
    /// the dest as present only from then on.
    pub fn peer_confirmed(&self) -> bool {
        self.peer_confirmed && !self.is_failed()
    }

    /// Encrypt `plaintext` (at most MAX_PLAINTEXT bytes), appending to `out`.
    ///
    /// [`Error::TooLarge`] leaves the state unchanged (nothing was sent);
    /// nonce exhaustion poisons it.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if matches!(self.state, State::V1(_) | State::V2(_)) && plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge);
        }
        let start = out.len();
        let res = match &mut self.state {
            State::V1(ts) => {
                out.resize(start + plaintext.len() + SEAL_OVERHEAD, 0);
                match ts.write_message(plaintext, &mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        Ok(())
                    }
                    Err(e) => Err(map_snow(e)),
                }
            }
            State::V2(t) => t.seal(plaintext, out),
            State::Failed => return Err(Error::Failed),
            State::Handshake(_) => return Err(Error::WrongPhase),
        };
        if res.is_err() {
            out.truncate(start);
            self.state = State::Failed;
        }
        res
    }

    /// [`Noise::seal`] without a copy where possible: `buf` holds the
    /// plaintext and is replaced by the sealed message, encrypted where it
    /// lies with the tag appended, for a negotiated (v2) session (give
    /// `buf` [`SEAL_OVERHEAD`] bytes of spare capacity and nothing moves);
    /// a v1 session seals into a new buffer (snow needs separate input and
    /// output buffers) that replaces `buf`. On failure the contents of
    /// `buf` are unspecified and, but for [`Error::TooLarge`], the state
    /// is poisoned.
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), Error> {
        if let State::V2(t) = &mut self.state {
            if buf.len() > MAX_PLAINTEXT {
                return Err(Error::TooLarge);
            }
            let res = t.seal_in_place(buf);
            if res.is_err() {
                buf.clear();
                self.state = State::Failed;
            }
            return res;
        }
        let mut sealed = Vec::with_capacity(buf.len() + SEAL_OVERHEAD);
        self.seal(buf, &mut sealed)?;
        *buf = sealed;
        Ok(())
    }

    /// [`Noise::open`] without a copy where possible: `msg` holds one sealed
    /// message; the plaintext returned lies in `msg` for a negotiated (v2)
    /// session, decrypted where the message lies, and in `scratch` for a v1
    /// session (snow needs separate input and output buffers, so this is
    /// what `open` would do). On failure the contents of `msg` are
    /// unspecified, nothing is returned, and the state is poisoned.
    pub fn open_in_place<'a>(
        &mut self,
        msg: &'a mut [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], Error> {
        if !matches!(self.state, State::V2(_)) {
            scratch.clear();
            self.open(msg, scratch)?;
            return Ok(scratch);
        }
        let res = if msg.len() > MAX_MESSAGE {
            Err(Error::TooLarge)
        } else if let State::V2(t) = &mut self.state {
            t.open_in_place(msg)
        } else {
            Err(Error::WrongPhase)
        };
        match res {
            Ok(n) => {
                self.peer_confirmed = true;
                Ok(&msg[..n])
            }
            Err(e) => {
                msg.fill(0);
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Decrypt and authenticate one message, appending plaintext to `out`.
    /// Any bit flip, replay, reordering or reflection fails.
    ///
    /// Each direction has its own key and a receive counter that must match
    /// the sender's: a replayed, reordered or dropped-before message is
    /// opened with the wrong nonce, and a message reflected back to its
    /// sender with the wrong key, so its tag fails. On any failure `out` is
    /// left as it was and the state is poisoned.
    pub fn open(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if !matches!(self.state, State::V1(_) | State::V2(_)) {
            return Err(match self.state {
                State::Failed => Error::Failed,
                _ => Error::WrongPhase,
            });
        }
        let start = out.len();
        let res = if ciphertext.len() > MAX_MESSAGE {
            Err(Error::TooLarge)
        } else if ciphertext.len() < SEAL_OVERHEAD {
            Err(Error::Decrypt)
        } else {
            match &mut self.state {
                State::V1(ts) => {
                    out.resize(start + ciphertext.len() - SEAL_OVERHEAD, 0);
                    match ts.read_message(ciphertext, &mut out[start..]) {
                        Ok(n) => {
                            out.truncate(start + n);
                            Ok(())
                        }
                        Err(e) => Err(map_snow(e)),
                    }
                }
                State::V2(t) => t.open(ciphertext, out),
                _ => Err(Error::WrongPhase),
            }
        };
        match res {
            Ok(()) => {
                self.peer_confirmed = true;
                Ok(())
            }
            Err(e) => {
                // Decryption happens in place: drop the unauthenticated bytes.
                out.truncate(start);
                self.state = State::Failed;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"correct horse battery staple 0123456789";

    fn sid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    /// How a test pair negotiates: (dest pref, dest hw AES, origin pref,
    /// origin hw AES) and the outcome (cipher, v2 negotiated).
    #[derive(Debug, Clone, Copy)]
    struct Mode {
        d: (CipherPref, bool),
        o: (CipherPref, bool),
        cipher: Cipher,
        v2: bool,
    }

    const MODES: [Mode; 3] = [
        // A dest without AES: the v1-format handshake and transport.
        Mode {
            d: (CipherPref::Auto, false),
            o: (CipherPref::Auto, true),
            cipher: Cipher::ChaCha20Poly1305,
            v2: false,
        },
        // The dest offers AES, the origin has none: v2 with ChaCha.
        Mode {
            d: (CipherPref::Auto, true),
            o: (CipherPref::Auto, false),
            cipher: Cipher::ChaCha20Poly1305,
            v2: true,
        },
        Mode {
            d: (CipherPref::Auto, true),
            o: (CipherPref::Auto, true),
            cipher: Cipher::Aes256Gcm,
            v2: true,
        },
    ];

    thread_local! {
        /// The mode [`pair`] uses; [`each_mode`] sets it.
        static MODE: std::cell::Cell<Mode> = const { std::cell::Cell::new(MODES[2]) };
    }

    /// Run a test body once in every negotiation mode.
    fn each_mode(f: impl Fn()) {
        for m in MODES {
            MODE.with(|c| c.set(m));
            f();
        }
        MODE.with(|c| c.set(MODES[2]));
    }

    fn noise(side: Side, token: &[u8], s: &Uuid, (pref, hw): (CipherPref, bool)) -> Noise {
        Noise::build(side, token, s, pref, hw).unwrap()
    }

    /// Run the handshake in the current mode; returns (dest, origin), both
    /// established.
    fn pair(token_d: &[u8], token_o: &[u8], s: &Uuid) -> (Noise, Noise) {
        let m = MODE.with(|c| c.get());
        let mut d = noise(Side::Dest, token_d, s, m.d);
        let mut o = noise(Side::Origin, token_o, s, m.o);
        assert!(d.wants_to_send());
        assert!(!o.wants_to_send());
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(m1.len(), HANDSHAKE_MSG_LEN);
        assert_eq!(m1[31] & OFFER_BIT != 0, m.v2, "{m:?}");
        assert!(!d.wants_to_send());
        o.handshake_in(&m1).unwrap();
        assert!(o.peer_proved_token());
        assert!(!o.peer_confirmed());
        assert!(o.wants_to_send());
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        let len2 = if m.v2 {
            HANDSHAKE_MSG2_V2_LEN
        } else {
            HANDSHAKE_MSG_LEN
        };
        assert_eq!(m2.len(), len2);
        assert!(o.is_established());
        d.handshake_in(&m2).unwrap();
        assert!(d.is_established());
        assert!(d.peer_proved_token() && d.peer_confirmed());
        assert!(!d.wants_to_send() && !o.wants_to_send());
        for n in [&d, &o] {
            assert_eq!(n.cipher(), Some(m.cipher), "{m:?}");
            assert_eq!(n.negotiated(), m.v2, "{m:?}");
        }
        (d, o)
    }

    fn seal(n: &mut Noise, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        n.seal(p, &mut v).unwrap();
        v
    }

    fn open(n: &mut Noise, c: &[u8]) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        n.open(c, &mut v).map(|()| v)
    }

    #[test]
    fn handshake_hash_shared_and_fresh() {
        let (d, o) = pair(TOKEN, TOKEN, &sid(1));
        assert_eq!(d.handshake_hash().len(), 32);
        assert_eq!(d.handshake_hash(), o.handshake_hash());
        let (d2, _) = pair(TOKEN, TOKEN, &sid(1));
        assert_ne!(d.handshake_hash(), d2.handshake_hash());
        assert!(Noise::new(Side::Dest, TOKEN, &sid(1))
            .unwrap()
            .handshake_hash()
            .is_empty());
    }

    #[test]
    fn token_generation() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43); // 32 bytes, base64url without padding
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert!(!token_is_short(a.as_bytes()));
        assert!(token_is_short(b"hunter2"));
    }

    #[test]
    fn derivation_deterministic_and_session_bound() {
        let a1 = admission(TOKEN, &sid(1));
        assert_eq!(a1, admission(TOKEN, &sid(1)));
        assert_eq!(a1.len(), 43);
        assert_ne!(a1, admission(TOKEN, &sid(2)));
        assert_ne!(a1, admission(b"another token entirely", &sid(1)));

        let mut p1 = [0u8; 32];
        let mut p1b = [0u8; 32];
        let mut p2 = [0u8; 32];
        derive(TOKEN, &sid(1), INFO_PSK, &mut p1);
        derive(TOKEN, &sid(1), INFO_PSK, &mut p1b);
        derive(TOKEN, &sid(2), INFO_PSK, &mut p2);
        assert_eq!(p1, p1b);
        assert_ne!(p1, p2);
        // admission != psk
        assert_ne!(URL_SAFE_NO_PAD.decode(&a1).unwrap(), p1.to_vec());
        // the token does not appear in the admission value
        let tok = std::str::from_utf8(TOKEN).unwrap();
        assert!(!a1.contains(tok));
        assert!(!a1.contains(&URL_SAFE_NO_PAD.encode(TOKEN)));
        let g = generate_token();
        assert!(!admission(g.as_bytes(), &sid(1)).contains(&g));
    }

    /// Pinned values, cross-checked against Python's hmac/hashlib HKDF, so
    /// another implementation can interoperate.
    #[test]
    fn derivation_known_answer() {
        let s = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            admission(b"sockrelay-test-token", &s),
            "E2Y_ZDcHLHDGdaKBGh-nrVL6Hm8EZ4PyphJbYq6B02g"
        );
        let mut psk = [0u8; 32];
        derive(b"sockrelay-test-token", &s, INFO_PSK, &mut psk);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(psk),
            "jXqLOXeK_jKioQtPc0dGgydFCVjuOhRz5oYtFobcKgg"
        );
    }

    #[test]
    fn handshake_then_both_directions() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(7));
            for i in 0..5u8 {
                let c = seal(&mut d, &[i; 100]);
                assert_eq!(c.len(), 100 + SEAL_OVERHEAD);
                assert_eq!(open(&mut o, &c).unwrap(), vec![i; 100]);
                assert!(o.peer_confirmed());
                let c = seal(&mut o, &[i ^ 0xff; 3]);
                assert_eq!(open(&mut d, &c).unwrap(), vec![i ^ 0xff; 3]);
            }
            // empty and maximal plaintexts
            let c = seal(&mut d, &[]);
            assert_eq!(open(&mut o, &c).unwrap(), Vec::<u8>::new());
            let big = vec![0xa5u8; MAX_PLAINTEXT];
            let c = seal(&mut o, &big);
            assert_eq!(c.len(), MAX_MESSAGE);
            assert_eq!(open(&mut d, &c).unwrap(), big);
            // appends to what is already in `out`
            let c = seal(&mut d, b"xyz");
            let mut out = b"ab".to_vec();
            o.open(&c, &mut out).unwrap();
            assert_eq!(out, b"abxyz");
        });
    }

    #[test]
    fn wrong_token_fails_at_origin() {
        let s = sid(3);
        let mut d = Noise::new(Side::Dest, b"the dest's token, which is wrong", &s).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
        assert!(!o.peer_proved_token());
        assert!(o.is_failed() && !o.wants_to_send());
        // poisoned: even the right message now fails
        let mut good = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        good.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Failed));
        assert_eq!(o.handshake_out(&mut Vec::new()), Err(Error::Failed));
    }

    #[test]
    fn wrong_session_fails() {
        let mut d = Noise::new(Side::Dest, TOKEN, &sid(1)).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &sid(2)).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
    }

    #[test]
    fn origin_response_with_wrong_token_fails_at_dest() {
        // A relay replaying a message 2 from another handshake, or an origin
        // without the token: the dest rejects it.
        let s = sid(4);
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut other_d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut other_o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut om1 = Vec::new();
        other_d.handshake_out(&mut om1).unwrap();
        other_o.handshake_in(&om1).unwrap();
        let mut om2 = Vec::new();
        other_o.handshake_out(&mut om2).unwrap();
        assert_eq!(d.handshake_in(&om2), Err(Error::Handshake));
    }

    #[test]
    fn handshake_tamper_and_reflection() {
        let s = sid(5);
        // bit flip in message 1 (in the ephemeral key, and in the tag)
        for pos in [0, 31, 32, HANDSHAKE_MSG_LEN - 1] {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            m1[pos] ^= 0x01;
            assert_eq!(o.handshake_in(&m1), Err(Error::Handshake), "pos {pos}");
        }
        // truncated / extended message 1
        for cut in [0, 1, 32, HANDSHAKE_MSG_LEN - 1] {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            assert_eq!(o.handshake_in(&m1[..cut]), Err(Error::Handshake));
        }
        {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            m1.push(0);
            assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
        }
        // the dest's message 1 reflected back to the dest as message 2
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(d.handshake_in(&m1), Err(Error::Handshake));
        // bit flip in message 2
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        o.handshake_in(&m1).unwrap();
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        m2[40] ^= 0x80;
        assert_eq!(d.handshake_in(&m2), Err(Error::Handshake));
        // the origin's message 2 reflected back to the origin
        m2[40] ^= 0x80;
        assert_eq!(o.handshake_in(&m2), Err(Error::WrongPhase));
    }

    #[test]
    fn replayed_message_1_cannot_be_confirmed() {
        each_mode(|| {
            // The relay replays a recorded message 1 to a new origin: the origin
            // sees the token proved but the replayer can produce nothing it opens.
            let s = sid(6);
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            o.handshake_in(&m1).unwrap();
            o.handshake_out(&mut Vec::new()).unwrap();
            assert!(o.peer_proved_token() && !o.peer_confirmed());
            // The attacker's best try: a transport message from another, complete
            // handshake of the same session.
            let (mut d2, _o2) = pair(TOKEN, TOKEN, &s);
            let forged = seal(&mut d2, b"sign this");
            assert_eq!(open(&mut o, &forged), Err(Error::Decrypt));
            assert!(!o.peer_confirmed());
        });
    }

    #[test]
    fn transport_bit_flips_fail() {
        each_mode(|| {
            let (mut d, _) = pair(TOKEN, TOKEN, &sid(8));
            let c = seal(&mut d, b"hello agent");
            for pos in 0..c.len() {
                for bit in [0x01u8, 0x80] {
                    let (mut d2, mut o2) = pair(TOKEN, TOKEN, &sid(8));
                    let mut c2 = seal(&mut d2, b"hello agent");
                    c2[pos] ^= bit;
                    let mut out = b"keep".to_vec();
                    assert_eq!(o2.open(&c2, &mut out), Err(Error::Decrypt));
                    assert_eq!(out, b"keep", "no unauthenticated bytes leak into out");
                    assert!(o2.is_failed());
                }
            }
        });
    }

    #[test]
    fn replay_fails() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(9));
            let c = seal(&mut d, b"one");
            open(&mut o, &c).unwrap();
            assert_eq!(open(&mut o, &c), Err(Error::Decrypt));
            // poisoned afterwards
            let c2 = seal(&mut d, b"two");
            assert_eq!(open(&mut o, &c2), Err(Error::Failed));
            assert_eq!(o.seal(b"x", &mut Vec::new()), Err(Error::Failed));
        });
    }

    #[test]
    fn reorder_and_drop_fail() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(10));
            let c1 = seal(&mut d, b"first");
            let c2 = seal(&mut d, b"second");
            assert_eq!(open(&mut o, &c2), Err(Error::Decrypt));
            assert_eq!(open(&mut o, &c1), Err(Error::Failed));
            // dropping a message in the middle: the next one fails
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(10));
            let c1 = seal(&mut d, b"1");
            let _dropped = seal(&mut d, b"2");
            let c3 = seal(&mut d, b"3");
            open(&mut o, &c1).unwrap();
            assert_eq!(open(&mut o, &c3), Err(Error::Decrypt));
        });
    }

    #[test]
    fn reflection_fails() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(11));
            // origin's message fed back to the origin (nonce 0 matches, key not)
            let c = seal(&mut o, b"agent reply");
            assert_eq!(open(&mut o, &c), Err(Error::Decrypt));
            // dest's message fed back to the dest
            let c = seal(&mut d, b"agent request");
            assert_eq!(open(&mut d, &c), Err(Error::Decrypt));
        });
    }

    #[test]
    fn truncation_fails() {
        each_mode(|| {
            for cut in [0usize, 1, 15, 16, 17, 20] {
                let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(12));
                let c = seal(&mut d, b"a message of some length");
                assert!(cut < c.len());
                assert_eq!(open(&mut o, &c[..cut]), Err(Error::Decrypt), "cut {cut}");
            }
            // dropping the tail byte
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(12));
            let c = seal(&mut d, b"a message of some length");
            assert_eq!(open(&mut o, &c[..c.len() - 1]), Err(Error::Decrypt));
        });
    }

    #[test]
    fn oversized_fails_cleanly() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(13));
            let mut out = b"x".to_vec();
            let big = vec![0u8; MAX_PLAINTEXT + 1];
            assert_eq!(d.seal(&big, &mut out), Err(Error::TooLarge));
            assert_eq!(out, b"x");
            // not poisoned, and no nonce was consumed
            let c = seal(&mut d, b"still fine");
            assert_eq!(open(&mut o, &c).unwrap(), b"still fine");
            let huge = vec![0u8; MAX_MESSAGE + 1];
            assert_eq!(o.open(&huge, &mut out), Err(Error::TooLarge));
            assert_eq!(out, b"x");
        });
    }

    #[test]
    fn nonce_exhaustion_is_an_error() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(16));
            let c = seal(&mut d, b"m");
            match &mut o.state {
                // 2^64 - 1 is reserved by Noise; snow refuses to use it.
                State::V1(ts) => ts.set_receiving_nonce(u64::MAX),
                // ... and so do we.
                State::V2(t) => t.recv.n = u64::MAX,
                _ => unreachable!(),
            }
            assert_eq!(open(&mut o, &c), Err(Error::NonceExhausted));
            assert!(o.is_failed());
            // snow has no way to set the sending nonce: check ours only.
            if let State::V2(t) = &mut d.state {
                t.send.n = u64::MAX;
                let mut out = Vec::new();
                assert_eq!(d.seal(b"m", &mut out), Err(Error::NonceExhausted));
                assert!(out.is_empty() && d.is_failed());
            }
        });
    }

    #[test]
    fn phase_errors() {
        let s = sid(14);
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        assert_eq!(d.seal(b"early", &mut Vec::new()), Err(Error::WrongPhase));
        assert_eq!(d.open(&[0u8; 32], &mut Vec::new()), Err(Error::WrongPhase));
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        assert_eq!(o.handshake_out(&mut Vec::new()), Err(Error::WrongPhase));
        let (mut d, mut o) = pair(TOKEN, TOKEN, &s);
        assert_eq!(d.handshake_out(&mut Vec::new()), Err(Error::WrongPhase));
        assert_eq!(o.handshake_in(&[0u8; 48]), Err(Error::WrongPhase));
        assert!(Noise::new(Side::Dest, b"", &s).is_err());
    }

    #[test]
    fn debug_shows_no_secrets() {
        each_mode(|| {
            let token = generate_token();
            let s = sid(15);
            let (d, o) = pair(token.as_bytes(), token.as_bytes(), &s);
            let mut psk = [0u8; 32];
            derive(token.as_bytes(), &s, INFO_PSK, &mut psk);
            let secrets = [
                token.clone(),
                URL_SAFE_NO_PAD.encode(psk),
                format!("{psk:?}"),
                format!("{:02x?}", &psk[..4]),
            ];
            for shown in [format!("{d:?}"), format!("{o:#?}")] {
                assert!(shown.contains("Noise"));
                for sec in &secrets {
                    assert!(!shown.contains(sec.as_str()), "{shown}");
                }
            }
            for e in [Error::Handshake, Error::Decrypt, Error::Failed] {
                assert!(!e.to_string().is_empty());
            }
        });
    }

    /// A peer of the previous version: exactly the v1 code's snow setup
    /// (snow's own resolvers, v1 prologue, psk), empty payloads required.
    fn v1_peer(side: Side, token: &[u8], s: &Uuid) -> HandshakeState {
        let mut prologue = PROLOGUE_PREFIX.to_vec();
        prologue.extend_from_slice(s.as_bytes());
        let mut psk = [0u8; 32];
        derive(token, s, INFO_PSK, &mut psk);
        let b = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
            .prologue(&prologue)
            .unwrap()
            .psk(0, &psk)
            .unwrap();
        match side {
            Side::Dest => b.build_initiator().unwrap(),
            Side::Origin => b.build_responder().unwrap(),
        }
    }

    /// Transport messages both ways between one of ours and a v1 peer.
    fn exchange_with_v1(ours: &mut Noise, mut theirs: TransportState) {
        let mut buf = vec![0u8; 200];
        for i in 0..3u8 {
            let c = seal(ours, &[i; 100]);
            let n = theirs.read_message(&c, &mut buf).unwrap();
            assert_eq!(&buf[..n], &[i; 100][..]);
            let n = theirs.write_message(&[i ^ 0x55; 7], &mut buf).unwrap();
            assert_eq!(open(ours, &buf[..n]).unwrap(), vec![i ^ 0x55; 7]);
        }
    }

    #[test]
    fn v1_origin_interoperates_with_an_offering_dest() {
        let s = sid(20);
        for (pref, hw) in [(CipherPref::Auto, true), (CipherPref::Auto, false)] {
            let mut d = noise(Side::Dest, TOKEN, &s, (pref, hw));
            let mut o = v1_peer(Side::Origin, TOKEN, &s);
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            assert_eq!(m1[31] & OFFER_BIT != 0, hw);
            let mut buf = [0u8; 100];
            // The v1 origin requires an empty payload and gets one.
            assert_eq!(o.read_message(&m1, &mut buf).unwrap(), 0);
            let n = o.write_message(&[], &mut buf).unwrap();
            assert_eq!(n, HANDSHAKE_MSG_LEN);
            d.handshake_in(&buf[..n]).unwrap();
            assert_eq!(d.cipher(), Some(Cipher::ChaCha20Poly1305));
            assert!(!d.negotiated());
            exchange_with_v1(&mut d, o.into_transport_mode().unwrap());
        }
    }

    #[test]
    fn v1_dest_interoperates_with_an_origin_that_has_aes() {
        let s = sid(21);
        for pref in [CipherPref::Auto, CipherPref::ChaCha] {
            let mut d = v1_peer(Side::Dest, TOKEN, &s);
            let mut o = noise(Side::Origin, TOKEN, &s, (pref, true));
            let mut buf = [0u8; 100];
            let n = d.write_message(&[], &mut buf).unwrap();
            o.handshake_in(&buf[..n]).unwrap();
            let mut m2 = Vec::new();
            o.handshake_out(&mut m2).unwrap();
            // No answer payload: the v1 dest would reject one.
            assert_eq!(m2.len(), HANDSHAKE_MSG_LEN);
            assert_eq!(d.read_message(&m2, &mut buf).unwrap(), 0);
            assert_eq!(o.cipher(), Some(Cipher::ChaCha20Poly1305));
            assert!(!o.negotiated());
            exchange_with_v1(&mut o, d.into_transport_mode().unwrap());
        }
    }

    #[test]
    fn offer_bit_does_not_change_the_dh() {
        // What interop with v1 origins rests on: X25519 ignores bit 255.
        let r = Resolver::new(true);
        let mut a = r.resolve_dh(&DHChoice::Curve25519).unwrap();
        let mut b = Resolver::new(false)
            .resolve_dh(&DHChoice::Curve25519)
            .unwrap();
        let mut rng = r.resolve_rng().unwrap();
        a.generate(&mut *rng).unwrap();
        b.generate(&mut *rng).unwrap();
        assert_eq!(a.pubkey()[31] & OFFER_BIT, OFFER_BIT);
        let mut plain = a.pubkey().to_vec();
        plain[31] &= !OFFER_BIT;
        let (mut x, mut y, mut z) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        b.dh(a.pubkey(), &mut x).unwrap();
        b.dh(&plain, &mut y).unwrap();
        a.dh(b.pubkey(), &mut z).unwrap();
        assert_eq!(x, y);
        assert_eq!(x, z);
    }

    /// Message 1 from a dest in `d` mode, message 2 from an origin in `o`.
    fn messages(s: &Uuid, d: (CipherPref, bool), o: (CipherPref, bool)) -> (Noise, Noise, Vec<u8>) {
        let mut dn = noise(Side::Dest, TOKEN, s, d);
        let mut on = noise(Side::Origin, TOKEN, s, o);
        let mut m1 = Vec::new();
        dn.handshake_out(&mut m1).unwrap();
        on.handshake_in(&m1).unwrap();
        (dn, on, m1)
    }

    #[test]
    fn downgrade_attempts_fail() {
        let s = sid(22);
        let both = (CipherPref::Auto, true);
        // A relay clears the offer bit (to make the origin choose ChaCha).
        let mut d = noise(Side::Dest, TOKEN, &s, both);
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        m1[31] &= !OFFER_BIT;
        let mut o = noise(Side::Origin, TOKEN, &s, both);
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
        // ... or sets it on a dest that did not offer.
        let mut d = noise(Side::Dest, TOKEN, &s, (CipherPref::ChaCha, true));
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        m1[31] |= OFFER_BIT;
        let mut o = noise(Side::Origin, TOKEN, &s, both);
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));

        // A relay strips the origin's answer to pose as a v1 origin, or
        // alters any byte of it.
        let (mut d, mut o, _) = messages(&s, both, both);
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        assert_eq!(m2.len(), HANDSHAKE_MSG2_V2_LEN);
        assert_eq!(
            d.handshake_in(&m2[..HANDSHAKE_MSG_LEN]),
            Err(Error::Handshake)
        );
        for pos in HANDSHAKE_MSG_LEN - 16..m2.len() {
            let (mut d, mut o, _) = messages(&s, both, both);
            let mut m2 = Vec::new();
            o.handshake_out(&mut m2).unwrap();
            m2[pos] ^= 0x01;
            assert_eq!(d.handshake_in(&m2), Err(Error::Handshake), "pos {pos}");
        }
        // ... or replays a v1-format message 2 of another handshake.
        let (_, mut o1, _) = messages(&s, (CipherPref::ChaCha, true), both);
        let mut v1_m2 = Vec::new();
        o1.handshake_out(&mut v1_m2).unwrap();
        let (mut d, _, _) = messages(&s, both, both);
        assert_eq!(d.handshake_in(&v1_m2), Err(Error::Handshake));
    }

    /// A peer that knows the token but breaks the answer format is refused
    /// too (the dest checks what it is told, not only that it verifies).
    #[test]
    fn malformed_answers_fail() {
        let s = sid(23);
        let both = (CipherPref::Auto, true);
        let bad: [&[u8]; 6] = [
            b"SR\x02\x03\x03",     // unknown cipher
            b"SR\x02\x02\x01",     // AES chosen, not supported
            b"SR\x01\x01\x01",     // other version
            b"SR\x02\x01",         // short
            b"SR\x02\x01\x01\x00", // long
            b"\x00",
        ];
        for payload in bad {
            let mut d = noise(Side::Dest, TOKEN, &s, both);
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            let mut o = v1_peer(Side::Origin, TOKEN, &s);
            let mut buf = [0u8; 100];
            o.read_message(&m1, &mut buf).unwrap();
            let n = o.write_message(payload, &mut buf).unwrap();
            assert_eq!(
                d.handshake_in(&buf[..n]),
                Err(Error::Handshake),
                "{payload:?}"
            );
        }
        // An answer to a dest that made no offer.
        let mut d = noise(Side::Dest, TOKEN, &s, (CipherPref::ChaCha, true));
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut o = v1_peer(Side::Origin, TOKEN, &s);
        let mut buf = [0u8; 100];
        o.read_message(&m1, &mut buf).unwrap();
        let n = o.write_message(b"SR\x02\x01\x01", &mut buf).unwrap();
        assert_eq!(d.handshake_in(&buf[..n]), Err(Error::Handshake));
    }

    #[test]
    fn forced_cipher() {
        let s = sid(24);
        let aes = (CipherPref::Aes, false);
        // Forced AES works without hardware AES on both sides.
        let (mut d, mut o, _) = messages(&s, aes, aes);
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        d.handshake_in(&m2).unwrap();
        assert_eq!(d.cipher(), Some(Cipher::Aes256Gcm));
        let c = seal(&mut d, b"forced");
        assert_eq!(open(&mut o, &c).unwrap(), b"forced");
        // A forced-AES dest and an origin that chooses ChaCha.
        let (mut d, mut o, _) = messages(&s, aes, (CipherPref::ChaCha, true));
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        assert_eq!(d.handshake_in(&m2), Err(Error::CipherRefused));
        assert!(d.is_failed());
        // A forced-AES origin and a dest that offers none.
        let mut d = noise(Side::Dest, TOKEN, &s, (CipherPref::ChaCha, true));
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut o = noise(Side::Origin, TOKEN, &s, aes);
        assert_eq!(o.handshake_in(&m1), Err(Error::CipherRefused));
        // A forced-AES dest and a v1 origin.
        let mut d = noise(Side::Dest, TOKEN, &s, aes);
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut o = v1_peer(Side::Origin, TOKEN, &s);
        let mut buf = [0u8; 100];
        o.read_message(&m1, &mut buf).unwrap();
        let n = o.write_message(&[], &mut buf).unwrap();
        assert_eq!(d.handshake_in(&buf[..n]), Err(Error::CipherRefused));
        // Forced ChaCha everywhere: the v1 format.
        let ch = (CipherPref::ChaCha, true);
        let (mut d, mut o, m1) = messages(&s, ch, ch);
        assert_eq!(m1[31] & OFFER_BIT, 0);
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        d.handshake_in(&m2).unwrap();
        assert!(!d.negotiated() && d.cipher() == Some(Cipher::ChaCha20Poly1305));

        assert_eq!(CipherPref::parse("AES"), Some(CipherPref::Aes));
        assert_eq!(CipherPref::parse("chacha"), Some(CipherPref::ChaCha));
        assert_eq!(CipherPref::parse("auto"), Some(CipherPref::Auto));
        assert_eq!(CipherPref::parse("des"), None);
    }

    #[test]
    fn rekey_at_epoch_boundaries() {
        for m in &MODES[1..] {
            MODE.with(|c| c.set(*m));
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(25));
            for n in [&mut d, &mut o] {
                let State::V2(t) = &mut n.state else {
                    unreachable!()
                };
                t.send.n = REKEY_MESSAGES - 2;
                t.recv.n = REKEY_MESSAGES - 2;
            }
            let before = match &d.state {
                State::V2(t) => t.send.secret,
                _ => unreachable!(),
            };
            let mut sealed = Vec::new();
            for i in 0..5u8 {
                let c = seal(&mut d, &[i; 33]);
                assert_eq!(open(&mut o, &c).unwrap(), vec![i; 33]);
                sealed.push(c);
                let c = seal(&mut o, &[i; 9]);
                assert_eq!(open(&mut d, &c).unwrap(), vec![i; 9]);
            }
            match &d.state {
                State::V2(t) => assert_ne!(t.send.secret, before),
                _ => unreachable!(),
            }
            // Past the boundary the key is new: the same nonce under the
            // epoch-0 key gives another ciphertext.
            let mut ratcheted = Direction::new(m.cipher, [7u8; 32]).unwrap();
            ratcheted.n = REKEY_MESSAGES - 1;
            ratcheted.advance().unwrap();
            let mut stale = Direction::new(m.cipher, [7u8; 32]).unwrap();
            stale.n = REKEY_MESSAGES;
            let mut a = *b"same plaintext";
            let mut b = a;
            let ta = ratcheted
                .key
                .seal_in_place_separate_tag(ratcheted.nonce().unwrap(), aead::Aad::empty(), &mut a)
                .unwrap();
            let tb = stale
                .key
                .seal_in_place_separate_tag(stale.nonce().unwrap(), aead::Aad::empty(), &mut b)
                .unwrap();
            assert_ne!((a, ta.as_ref()), (b, tb.as_ref()));
        }
        MODE.with(|c| c.set(MODES[2]));
    }

    #[test]
    fn open_in_place_agrees_with_open() {
        each_mode(|| {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(27));
            let mut scratch = Vec::new();
            for len in [0usize, 1, 100, MAX_PLAINTEXT] {
                let p: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut c = seal(&mut d, &p);
                let got = o.open_in_place(&mut c, &mut scratch).unwrap();
                assert_eq!(got, &p[..]);
                assert!(o.peer_confirmed());
            }
            // A flipped bit fails and poisons, as with `open`.
            let mut c = seal(&mut d, b"x");
            c[0] ^= 1;
            assert_eq!(o.open_in_place(&mut c, &mut scratch), Err(Error::Decrypt));
            let mut c = seal(&mut d, b"y");
            assert_eq!(o.open_in_place(&mut c, &mut scratch), Err(Error::Failed));
            // Too short to hold a tag.
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(27));
            let _ = &mut d;
            let mut short = [0u8; 15];
            assert_eq!(
                o.open_in_place(&mut short, &mut scratch),
                Err(Error::Decrypt)
            );
        });
    }

    #[test]
    fn wrong_key_fails_in_every_mode() {
        each_mode(|| {
            // Two handshakes of the same session: keys differ.
            let (mut d1, _o1) = pair(TOKEN, TOKEN, &sid(26));
            let (_d2, mut o2) = pair(TOKEN, TOKEN, &sid(26));
            let c = seal(&mut d1, b"for o1 only");
            assert_eq!(open(&mut o2, &c), Err(Error::Decrypt));
        });
    }
}
