// A Matrix client with end-to-end encryption (matrix-js-sdk with its Rust crypto, in memory) for
// Custodian's end-to-end tests. One process is one client. It reads one JSON request a line on
// stdin and writes one JSON reply a line on stdout:
//
//   request: {"id": 1, "cmd": "login", ...arguments}
//   reply:   {"id": 1, "ok": true, ...results} or {"id": 1, "ok": false, "error": "..."}
//
// Commands:
//   login      {base_url, user, password}           -> {user_id, device_id}
//   createDM   {user_id}                            -> {room_id}  (encrypted, Element-style)
//   join       {room_id}                            -> {room_id}
//   send       {room_id, body, timeout_ms}          -> {event_id}  (refuses to send in plaintext)
//   waitFor    {body, room_id?, timeout_ms}         -> {event_id, room_id, sender, body, encrypted}
//   failures   {}                                   -> {failures: [{event_id, room_id, sender, reason}]}
//   stop       {}                                   -> {}, then the process exits
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

const defaultTimeout = 30_000;
const maxTimeout = 120_000;

let client = null;
// Messages seen in timelines, by event ID: {event_id, room_id, sender, body, encrypted}.
const messages = new Map();
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

function record(ev) {
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
	} else if (ev.getType() === "m.room.message") {
		failures.delete(id);
		const content = ev.getContent();
		messages.set(id, {
			event_id: id,
			room_id: ev.getRoomId(),
			sender: ev.getSender(),
			body: typeof content.body === "string" ? content.body : "",
			encrypted: ev.isEncrypted(),
		});
	}
	notify();
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
	client.on(sdk.RoomEvent.Timeline, (ev) => record(ev));
	client.on(sdk.MatrixEventEvent.Decrypted, (ev) => record(ev));
	client.on(sdk.RoomEvent.MyMembership, () => notify());
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
	return { user_id: resp.user_id, device_id: resp.device_id };
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
		() => {
			for (const m of messages.values()) if (match(m)) return m;
			return null;
		},
		() => {
			const f = [...failures.values()].filter((x) => !req.room_id || x.room_id === req.room_id);
			return `no message with body ${JSON.stringify(req.body)}; ${messages.size} message(s) seen; decryption failures: ${JSON.stringify(f)}`;
		},
	);
}

const commands = {
	login,
	createDM,
	join,
	send,
	waitFor,
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
