// A Matrix client with end-to-end encryption (matrix-js-sdk with its Rust crypto, in memory) for
// Custodian's end-to-end tests. One process is one client. It reads one JSON request a line on
// stdin and writes one JSON reply a line on stdout:
//
//   request: {"id": 1, "cmd": "login", ...arguments}
//   reply:   {"id": 1, "ok": true, ...results} or {"id": 1, "ok": false, "error": "..."}
//
// Commands:
//   login         {base_url, user, password}        -> {user_id, device_id, identity_key}
//   createDM      {user_id}                         -> {room_id}  (encrypted, Element-style)
//   createRoom    {invite, power_levels?}           -> {room_id}  (private_chat, encrypted)
//   join          {room_id}                         -> {room_id}
//   send          {room_id, body, timeout_ms}       -> {event_id}  (refuses to send in plaintext)
//   waitFor       {body, room_id?, timeout_ms}      -> a message (below) with that body
//   messages      {since, timeout_ms}               -> {messages: [...]}: the messages seen from
//                                                      index since on, waiting until there is one
//                                                      (an empty list after timeout_ms)
//   waitForInvite {from?, timeout_ms}               -> {room_id, inviter}: the first invite (from
//                                                      that user) not returned before
//   autoJoin      {from}                            -> {}: from now on, join every invite from that
//                                                      user (and those not yet returned) at once
//   failures      {}                                -> {failures: [{event_id, room_id, sender, reason}]}
//   download      {file}                            -> {data_base64}: an encrypted attachment
//                                                      (the EncryptedFile of m.file) downloaded
//                                                      from the authenticated media API, its
//                                                      SHA-256 checked, decrypted with AES-CTR
//   deviceStatus  {user_id, device_id, timeout_ms}  -> {known, signed_by_owner,
//                                                      cross_signing_verified, verified}: known
//                                                      only for users sharing an encrypted room
//   stop          {}                                -> {}, then the process exits
//
// A message is {index, event_id, room_id, sender, msgtype, body, formatted_body, reply_to, file,
// encrypted, shield: {colour, reason}}: m.room.message events, decrypted if they were encrypted,
// in the order the client first saw them in clear; shield is the SDK's verdict on an encrypted
// event's sender device when it was decrypted (EventShieldColour and EventShieldReason names,
// reason "" for none), null if unencrypted.
//
// Every wait is bounded by its timeout_ms (default 30 s, at most 120 s). The SDK's own logging
// goes to stderr, so stdout carries only replies.
import readline from "node:readline";

const realStdout = process.stdout;
// The SDK logs through console.*; keep stdout for the protocol.
for (const level of ["log", "info", "debug", "trace", "warn"]) {
	console[level] = (...args) => console.error(...args);
}

const sdk = await import("matrix-js-sdk");
const cryptoTypes = await import("matrix-js-sdk/lib/crypto-api/index.js");

const defaultTimeout = 30_000;
const maxTimeout = 120_000;

let client = null;
// Messages seen in timelines, in the order first seen in clear (see the header), and their
// indexes by event ID.
const messages = [];
const messageIndex = new Map();
// Invites received, in order: {room_id, inviter}; taken marks those waitForInvite returned.
const invites = [];
const takenInvites = new Set();
// Inviters whose invites the client accepts on its own (autoJoin).
const autoJoinFrom = new Set();
// Events that failed to decrypt and have not decrypted since, by event ID.
const failures = new Map();
// Waiters run after every change to messages or rooms.
const waiters = new Set();

function reply(obj) {
	realStdout.write(JSON.stringify(obj) + "\n");
}

function timeoutOf(req) {
	const t = Number(req.timeout_ms ?? defaultTimeout);
	if (!Number.isFinite(t) || t <= 0) return defaultTimeout;
	return Math.min(t, maxTimeout);
}

function notify() {
	for (const w of waiters) w();
}

// waitUntil resolves with check()'s first truthy result, re-checked after every change and every
// 200 ms, or rejects with describe() after timeoutMs.
function waitUntil(timeoutMs, check, describe) {
	return new Promise((resolve, reject) => {
		let done = false;
		let running = false;
		const finish = () => {
			done = true;
			waiters.delete(poll);
			clearTimeout(timer);
			clearInterval(ticker);
		};
		const poll = async () => {
			if (done || running) return;
			running = true;
			try {
				const v = await check();
				if (v && !done) {
					finish();
					resolve(v);
				}
			} catch (err) {
				if (!done) {
					finish();
					reject(err);
				}
			} finally {
				running = false;
			}
		};
		const timer = setTimeout(() => {
			if (done) return;
			finish();
			reject(new Error(`timed out after ${timeoutMs} ms: ${describe()}`));
		}, timeoutMs);
		const ticker = setInterval(poll, 200);
		waiters.add(poll);
		poll();
	});
}

// Event IDs whose message is being recorded (its shield computed).
const recording = new Set();

async function record(ev) {
	if (ev.getType() !== "m.room.message" && !ev.isEncrypted()) return;
	if (ev.isBeingDecrypted() || ev.shouldAttemptDecryption()) return; // Decrypted follows
	const id = ev.getId();
	if (!id || id.startsWith("~")) return; // local echo
	if (ev.isDecryptionFailure()) {
		failures.set(id, {
			event_id: id,
			room_id: ev.getRoomId(),
			sender: ev.getSender(),
			reason: String(ev.decryptionFailureReason ?? "unknown"),
		});
		notify();
		return;
	}
	if (ev.getType() !== "m.room.message") return;
	failures.delete(id);
	if (messageIndex.has(id) || recording.has(id)) return;
	recording.add(id);
	// The shield first, so that a message is only ever seen with it.
	let shield = null;
	if (ev.isEncrypted()) {
		try {
			const info = await client.getCrypto().getEncryptionInfoForEvent(ev);
			if (info) {
				shield = {
					colour: cryptoTypes.EventShieldColour[info.shieldColour] ?? String(info.shieldColour),
					reason: info.shieldReason == null ? "" : (cryptoTypes.EventShieldReason[info.shieldReason] ?? String(info.shieldReason)),
				};
			}
		} catch (err) {
			console.error("shield of", id, err);
		}
	}
	recording.delete(id);
	const content = ev.getContent();
	const msg = {
		index: messages.length,
		event_id: id,
		room_id: ev.getRoomId(),
		sender: ev.getSender(),
		msgtype: typeof content.msgtype === "string" ? content.msgtype : "",
		body: typeof content.body === "string" ? content.body : "",
		formatted_body: typeof content.formatted_body === "string" ? content.formatted_body : "",
		reply_to: ev.replyEventId ?? "",
		file: content.file ?? null,
		encrypted: ev.isEncrypted(),
		shield,
	};
	messageIndex.set(id, msg.index);
	messages.push(msg);
	notify();
}

function recordLogged(ev) {
	record(ev).catch((err) => console.error("recording", ev.getId(), err));
}

function recordInvite(room, membership) {
	if (membership !== "invite") return;
	if (invites.some((inv) => inv.room_id === room.roomId)) return;
	const me = room.getMember(client.getUserId());
	const inviter = me?.events?.member?.getSender() ?? room.getDMInviter() ?? "";
	invites.push({ room_id: room.roomId, inviter });
	if (autoJoinFrom.has(inviter)) acceptInvite(room.roomId);
	notify();
}

function acceptInvite(roomId) {
	takenInvites.add(roomId);
	client.joinRoom(roomId).catch((err) => console.error("auto-joining", roomId, err));
}

async function autoJoin(req) {
	needClient();
	autoJoinFrom.add(req.from);
	for (const inv of invites) {
		if (inv.inviter === req.from && !takenInvites.has(inv.room_id)) acceptInvite(inv.room_id);
	}
	return {};
}

async function login(req) {
	if (client) throw new Error("already logged in");
	const tmp = sdk.createClient({ baseUrl: req.base_url });
	const resp = await tmp.loginRequest({
		type: "m.login.password",
		identifier: { type: "m.id.user", user: req.user },
		password: req.password,
		initial_device_display_name: "custodian e2e js client",
	});
	client = sdk.createClient({
		baseUrl: req.base_url,
		userId: resp.user_id,
		deviceId: resp.device_id,
		accessToken: resp.access_token,
	});
	await client.initRustCrypto({ useIndexedDB: false });
	client.on(sdk.RoomEvent.Timeline, (ev) => recordLogged(ev));
	client.on(sdk.MatrixEventEvent.Decrypted, (ev) => recordLogged(ev));
	client.on(sdk.RoomEvent.MyMembership, (room, membership) => {
		recordInvite(room, membership);
		notify();
	});
	let syncState = null;
	client.on(sdk.ClientEvent.Sync, (state) => {
		syncState = state;
		notify();
	});
	await client.startClient({ initialSyncLimit: 0 });
	await waitUntil(
		timeoutOf(req),
		() => {
			if (syncState === sdk.SyncState.Error) throw new Error("the first sync failed");
			return syncState === sdk.SyncState.Prepared || syncState === sdk.SyncState.Syncing;
		},
		() => `first sync (state ${syncState})`,
	);
	const keys = await client.getCrypto().getOwnDeviceKeys();
	return { user_id: resp.user_id, device_id: resp.device_id, identity_key: keys.curve25519 };
}

function needClient() {
	if (!client) throw new Error("not logged in");
	return client;
}

async function createDM(req) {
	const cli = needClient();
	const { room_id: roomId } = await cli.createRoom({
		preset: sdk.Preset.TrustedPrivateChat,
		visibility: sdk.Visibility.Private,
		is_direct: true,
		invite: [req.user_id],
		initial_state: [
			{
				type: "m.room.encryption",
				state_key: "",
				content: { algorithm: "m.megolm.v1.aes-sha2" },
			},
		],
	});
	return { room_id: roomId };
}

async function createRoom(req) {
	const cli = needClient();
	const opts = {
		preset: sdk.Preset.PrivateChat,
		visibility: sdk.Visibility.Private,
		invite: req.invite ?? [],
		initial_state: [
			{
				type: "m.room.encryption",
				state_key: "",
				content: { algorithm: "m.megolm.v1.aes-sha2" },
			},
		],
	};
	if (req.power_levels) opts.power_level_content_override = req.power_levels;
	const { room_id: roomId } = await cli.createRoom(opts);
	return { room_id: roomId };
}

async function join(req) {
	const cli = needClient();
	await cli.joinRoom(req.room_id);
	return { room_id: req.room_id };
}

async function send(req) {
	const cli = needClient();
	// The SDK encrypts only once it knows the room is encrypted; never let a message the test
	// means to be encrypted go out in plaintext because sync has not caught up yet.
	await waitUntil(
		timeoutOf(req),
		async () => {
			const room = cli.getRoom(req.room_id);
			if (!room || room.getMyMembership() !== "join") return false;
			return cli.getCrypto().isEncryptionEnabledInRoom(req.room_id);
		},
		() => `room ${req.room_id} joined and known to be encrypted`,
	);
	const { event_id: eventId } = await cli.sendTextMessage(req.room_id, req.body);
	return { event_id: eventId };
}

async function waitFor(req) {
	const match = (m) => m.body === req.body && (!req.room_id || m.room_id === req.room_id);
	return waitUntil(
		timeoutOf(req),
		() => messages.find(match) ?? null,
		() => {
			const f = [...failures.values()].filter((x) => !req.room_id || x.room_id === req.room_id);
			return `no message with body ${JSON.stringify(req.body)}; ${messages.length} message(s) seen; decryption failures: ${JSON.stringify(f)}`;
		},
	);
}

async function listMessages(req) {
	const since = Math.max(0, Number(req.since ?? 0));
	try {
		await waitUntil(
			timeoutOf(req),
			() => messages.length > since,
			() => `a message after ${since}`,
		);
	} catch {
		// Nothing new within the timeout: an empty list, the caller decides.
	}
	return { messages: messages.slice(since) };
}

async function waitForInvite(req) {
	needClient();
	const inv = await waitUntil(
		timeoutOf(req),
		() => invites.find((i) => !takenInvites.has(i.room_id) && (!req.from || i.inviter === req.from)) ?? null,
		() => `an invite from ${req.from ?? "anyone"}; invites seen: ${JSON.stringify(invites)}`,
	);
	takenInvites.add(inv.room_id);
	return inv;
}

function fromBase64(s) {
	const std = s.replace(/-/g, "+").replace(/_/g, "/");
	return Uint8Array.from(Buffer.from(std, "base64"));
}

function unpaddedBase64(bytes) {
	return Buffer.from(bytes).toString("base64").replace(/=+$/, "");
}

// download fetches an encrypted attachment through the authenticated media API, checks the
// SHA-256 of the ciphertext against the message's hash and decrypts it with AES-CTR (the key a
// JWK, the counter block the 16-byte IV), all with WebCrypto.
async function download(req) {
	const cli = needClient();
	const file = req.file;
	if (!file?.url?.startsWith("mxc://")) throw new Error(`not an encrypted file: ${JSON.stringify(file)}`);
	if (file.key?.alg !== "A256CTR") throw new Error(`unsupported key algorithm ${file.key?.alg}`);
	const [server, mediaId] = file.url.slice("mxc://".length).split("/", 2);
	const url = `${cli.getHomeserverUrl()}/_matrix/client/v1/media/download/${encodeURIComponent(server)}/${encodeURIComponent(mediaId)}`;
	const resp = await fetch(url, {
		headers: { Authorization: `Bearer ${cli.getAccessToken()}` },
		signal: AbortSignal.timeout(timeoutOf(req)),
	});
	if (!resp.ok) throw new Error(`GET ${url}: status ${resp.status}: ${await resp.text()}`);
	const ciphertext = new Uint8Array(await resp.arrayBuffer());
	const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", ciphertext));
	const want = (file.hashes?.sha256 ?? "").replace(/=+$/, "");
	if (unpaddedBase64(digest) !== want) {
		throw new Error(`the attachment's SHA-256 ${unpaddedBase64(digest)} is not the message's ${want}`);
	}
	const key = await crypto.subtle.importKey("jwk", file.key, { name: "AES-CTR" }, false, ["decrypt"]);
	const plaintext = await crypto.subtle.decrypt(
		{ name: "AES-CTR", counter: fromBase64(file.iv), length: 64 },
		key,
		ciphertext,
	);
	return { data_base64: Buffer.from(plaintext).toString("base64") };
}

// deviceStatus reports what the SDK thinks of one of user's devices. The Rust crypto knows the
// devices only of users it tracks (who share an encrypted room with the client), so it waits (up
// to timeout_ms) until the device is known; an unknown device is reported as known: false.
async function deviceStatus(req) {
	const cryptoApi = needClient().getCrypto();
	let status = null;
	try {
		status = await waitUntil(
			timeoutOf(req),
			() => cryptoApi.getDeviceVerificationStatus(req.user_id, req.device_id),
			() => `device ${req.device_id} of ${req.user_id} known`,
		);
	} catch {
		// Unknown within the timeout.
	}
	if (!status) return { known: false, signed_by_owner: false, cross_signing_verified: false, verified: false };
	return {
		known: true,
		signed_by_owner: status.signedByOwner,
		cross_signing_verified: status.crossSigningVerified,
		verified: status.isVerified(),
	};
}

const commands = {
	login,
	createDM,
	createRoom,
	join,
	send,
	waitFor,
	messages: listMessages,
	waitForInvite,
	autoJoin,
	download,
	deviceStatus,
	failures: async () => ({ failures: [...failures.values()] }),
	stop: async () => {
		client?.stopClient();
		return {};
	},
};

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on("line", async (line) => {
	if (!line.trim()) return;
	let req;
	try {
		req = JSON.parse(line);
	} catch (err) {
		reply({ id: null, ok: false, error: `bad request: ${err.message}` });
		return;
	}
	const fn = commands[req.cmd];
	if (!fn) {
		reply({ id: req.id, ok: false, error: `unknown command ${JSON.stringify(req.cmd)}` });
		return;
	}
	try {
		const result = await fn(req);
		reply({ id: req.id, ok: true, ...result });
		if (req.cmd === "stop") process.exit(0);
	} catch (err) {
		reply({ id: req.id, ok: false, error: String(err?.stack ?? err) });
	}
});
// Exit when the harness closes stdin (or dies).
rl.on("close", () => {
	client?.stopClient();
	process.exit(0);
});
