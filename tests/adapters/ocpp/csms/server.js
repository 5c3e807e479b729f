#!/usr/bin/env node
// OCPP 1.6J test central system for evsite's test suite (tests/adapters/ocpp/csms.py starts it).
//
// An ocpp-rpc RPCServer in strictMode: every call and every response, in both directions, is
// validated against the official OCPP 1.6 JSON schemas bundled in ocpp-rpc. It is deliberately
// not built on the Python `ocpp` library the product uses, so a shared misreading of the schemas
// cannot pass on both sides. Every frame both ways goes to <dir>/messages.jsonl and every
// violation to <dir>/violations.jsonl (and stays in memory for the control API).
//
// Where ocpp-rpc 2.2.1 reports strict-mode failures (lib/client.js), all counted here through its
// 'strictValidationFailure' event {messageId, method, params, result, error, outbound, isCall}:
//   - a charge point's CALL with an invalid payload (outbound=false, isCall=true): ocpp-rpc
//     answers it with a CALLERROR itself (FormationViolation, OccurrenceConstraintViolation,
//     TypeConstraintViolation, PropertyConstraintViolation on 1.6); the handler never runs.
//     It validates only when a handler exists, so every charge-point action has one here.
//   - a charge point's CALLRESULT to our call with an invalid payload (outbound=false,
//     isCall=false): the call's promise rejects with the validation error.
//   - our own CALL with an invalid payload (outbound=true, isCall=true): call() throws before
//     anything is sent.
//   - our own CALLRESULT with an invalid payload (outbound=true, isCall=false): ocpp-rpc sends
//     a CALLERROR InternalError instead (a wrong id-tag table, for instance).
// Counted besides, since strict mode does not see them:
//   - 'badMessage': a frame from the charge point that is not OCPP-J RPC (not JSON, not an
//     array, unknown message type, a CALLRESULT/CALLERROR for an id we never sent...);
//     answers to our raw frames and late answers to calls that timed out are not counted.
//   - a CALL of an action a charge point does not initiate in 1.6 (answered NotImplemented).
//   - a CALLERROR from the charge point whose errorCode is not an OCPP-J 1.6 error code.
//   - a websocket upgrade that does not offer the 'ocpp1.6' subprotocol (refused with 400):
//     without a subprotocol ocpp-rpc would silently skip strict mode.
//
// Usage: node server.js --dir DIR [--port N] [--http-port N] [--cert F --key F]
//                       [--ping-interval-s N]
// Prints `READY ws=<port> http=<port>` once both listen on 127.0.0.1; exits on SIGTERM, SIGINT
// or when stdin closes (the parent test process died), so it never outlives the test.

'use strict';

const fs = require('node:fs');
const path = require('node:path');
const http = require('node:http');
const https = require('node:https');
const { parseArgs } = require('node:util');
const { RPCServer, createRPCError, NOREPLY, TimeoutError } = require('ocpp-rpc');

const PROTOCOL = 'ocpp1.6';
const MSG_CALL = 2;
const MSG_CALLRESULT = 3;
const MSG_CALLERROR = 4;

// Actions a charge point initiates in OCPP 1.6 (core, firmware, and the security extension).
const CP_ACTIONS = [
    'Authorize', 'BootNotification', 'DataTransfer', 'DiagnosticsStatusNotification',
    'FirmwareStatusNotification', 'Heartbeat', 'MeterValues', 'StartTransaction',
    'StatusNotification', 'StopTransaction',
    'SecurityEventNotification', 'SignCertificate', 'LogStatusNotification',
    'SignedFirmwareStatusNotification',
];

// OCPP-J 1.6 §4.2.3 error codes. Both spellings of the two the 1.6 errata argue about.
const CALLERROR_CODES = new Set([
    'NotImplemented', 'NotSupported', 'InternalError', 'ProtocolError', 'SecurityError',
    'FormationViolation', 'FormatViolation', 'PropertyConstraintViolation',
    'OccurenceConstraintViolation', 'OccurrenceConstraintViolation', 'TypeConstraintViolation',
    'GenericError',
]);

const OCPP16_CODES = {
    FormatViolation: 'FormationViolation',
    OccurenceConstraintViolation: 'OccurrenceConstraintViolation',
};

const DEFAULT_CONFIG = {
    bootStatus: 'Accepted',          // Accepted | Pending | Rejected
    heartbeatInterval: 300,          // BootNotification.conf interval, seconds
    idTags: {},                      // idTag -> {status, parentIdTag?, expiryDate?}; else Invalid
    nextTransactionId: 1,            // StartTransaction.conf transactionId, then +1 each
    dataTransfer: {},                // vendorId -> {status, data?}; else UnknownVendorId
    actions: {},                     // action -> {delayMs?, reject?: {code, description, times?}, noReply?}
    auth: { password: null, passwords: {} },  // Basic auth: per identity, else one for all
};

// ---------------------------------------------------------------------------------------------
// arguments, files

const { values: args } = parseArgs({
    options: {
        dir: { type: 'string' },
        port: { type: 'string', default: '0' },
        'http-port': { type: 'string', default: '0' },
        cert: { type: 'string' },
        key: { type: 'string' },
        'ping-interval-s': { type: 'string', default: '30' },
    },
});
if (!args.dir) {
    process.stderr.write('usage: server.js --dir DIR [--port N] [--http-port N] [--cert F --key F]\n');
    process.exit(2);
}
if (Boolean(args.cert) !== Boolean(args.key)) {
    process.stderr.write('--cert and --key go together\n');
    process.exit(2);
}
fs.mkdirSync(args.dir, { recursive: true });
const MESSAGES_FILE = path.join(args.dir, 'messages.jsonl');
const VIOLATIONS_FILE = path.join(args.dir, 'violations.jsonl');
const CONFIG_FILE = path.join(args.dir, 'config.json');

function readJsonLines(file) {
    if (!fs.existsSync(file)) return [];
    return fs.readFileSync(file, 'utf8').split('\n').filter(l => l.trim()).flatMap(l => {
        try { return [JSON.parse(l)]; } catch { return []; }  // a line cut by a kill
    });
}

// A restart (same --dir) continues the log, the violations and the configuration, including the
// next transaction id: a real backend never hands out a transaction id twice.
const messages = readJsonLines(MESSAGES_FILE);
const violations = readJsonLines(VIOLATIONS_FILE);
let config = mergeConfig(structuredClone(DEFAULT_CONFIG),
    fs.existsSync(CONFIG_FILE) ? JSON.parse(fs.readFileSync(CONFIG_FILE, 'utf8')) : {});
saveConfig();

function mergeConfig(base, update) {
    const out = { ...base };
    for (const [k, v] of Object.entries(update ?? {})) {
        if (!(k in DEFAULT_CONFIG)) throw new Error(`unknown configuration key '${k}'`);
        if (k === 'actions') {
            // per action: an empty object or null clears that action's behaviour
            out.actions = { ...base.actions };
            for (const [action, behaviour] of Object.entries(v ?? {})) {
                if (behaviour && Object.keys(behaviour).length) out.actions[action] = behaviour;
                else delete out.actions[action];
            }
        } else if (k === 'auth') {
            out.auth = { password: null, passwords: {}, ...v };
        } else {
            out[k] = v;
        }
    }
    return out;
}

function saveConfig() {
    fs.writeFileSync(CONFIG_FILE + '.tmp', JSON.stringify(config, null, 2));
    fs.renameSync(CONFIG_FILE + '.tmp', CONFIG_FILE);
}

function now() {
    return new Date().toISOString();
}

function logEntry(entry) {
    const e = { i: messages.length, ts: now(), ...entry };
    messages.push(e);
    fs.appendFileSync(MESSAGES_FILE, JSON.stringify(e) + '\n');
    return e;
}

function recordViolation(v) {
    const e = { i: violations.length, ts: now(), ...v };
    violations.push(e);
    fs.appendFileSync(VIOLATIONS_FILE, JSON.stringify(e) + '\n');
    process.stderr.write(`VIOLATION ${JSON.stringify(e)}\n`);
    return e;
}

function parseFrame(text) {
    try {
        const m = JSON.parse(text);
        return Array.isArray(m) ? m : null;
    } catch {
        return null;
    }
}

function sleep(ms) {
    return new Promise(resolve => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// the OCPP side

const rpc = new RPCServer({
    protocols: [PROTOCOL],
    strictMode: true,
    pingIntervalMs: Number(args['ping-interval-s']) * 1000,
    callTimeoutMs: 30000,
});

rpc.on('error', err => process.stderr.write(`websocket server error: ${err.stack}\n`));

const connections = new Map();   // identity -> Connection (the newest)
const errorInfo = new WeakMap(); // error object -> {violation?, messageId?} for the control API

rpc.auth((accept, reject, handshake) => {
    const identity = handshake.identity;
    if (!handshake.protocols.has(PROTOCOL)) {
        recordViolation({
            identity, direction: 'from_cp', kind: 'handshake', action: null, messageId: null,
            errorCode: null, error: `websocket upgrade without the '${PROTOCOL}' subprotocol ` +
                `(offered: ${[...handshake.protocols].join(', ') || 'none'})`,
            details: null, payload: null,
        });
        logEntry({ identity, event: 'rejected', detail: 'no ocpp1.6 subprotocol' });
        reject(400, `Subprotocol '${PROTOCOL}' required`);
        return;
    }
    const { password: all, passwords } = config.auth;
    const expected = passwords && identity in passwords ? passwords[identity] : all;
    const anyAuth = all != null || (passwords && Object.keys(passwords).length > 0);
    if (anyAuth) {
        // ocpp-rpc gives the password only when the Basic auth user equals the identity
        const ok = expected != null && handshake.password !== undefined &&
            Buffer.from(expected, 'utf8').equals(handshake.password);
        if (!ok) {
            logEntry({ identity, event: 'rejected', detail: 'authentication failed (401)' });
            reject(401, 'Unauthorized');
            return;
        }
    }
    accept({}, PROTOCOL);
});

rpc.on('client', client => {
    const identity = client.identity;
    const old = connections.get(identity);
    const conn = new Connection(client);
    connections.set(identity, conn);
    logEntry({ identity, event: 'connected', detail: null });
    if (old) {
        // the newest connection of an identity wins, as in most central systems
        logEntry({ identity, event: 'replaced', detail: 'a newer connection of this identity' });
        old.client.close({ code: 1000, reason: 'replaced by a newer connection' }).catch(() => {});
    }
    client.on('close', ({ code, reason }) => {
        if (connections.get(identity) === conn) connections.delete(identity);
        logEntry({ identity, event: 'disconnected', detail: { code, reason: String(reason ?? '') } });
        conn.closed();
    });
});

class Connection {
    constructor(client) {
        this.client = client;
        this.identity = client.identity;
        this.outCalls = new Map();   // messageId -> action of CALLs sent to the charge point
        this.inCalls = new Map();    // messageId -> action of CALLs received from it
        this.rawIds = new Set();     // ids of CALLs sent raw: their answers are not ocpp-rpc's
        this.timedOut = new Set();   // ids of our calls that timed out: late answers are no fault
        this.callErrors = new Map(); // messageId -> CALLERROR frame from the charge point
        this.rawWaiters = [];        // {id|null, resolve}: answers to raw frames

        client.on('message', ({ message, outbound }) => this.onFrame(String(message), outbound));

        client.on('strictValidationFailure', ({ messageId, method, params, result, error, outbound, isCall }) => {
            const v = recordViolation({
                identity: this.identity,
                direction: outbound ? 'to_cp' : 'from_cp',
                kind: isCall ? 'call' : 'result',
                action: method,
                messageId,
                // the 1.6 spelling, as ocpp-rpc puts it in the CALLERROR it answers with
                errorCode: OCPP16_CODES[error.rpcErrorCode] ?? error.rpcErrorCode ?? null,
                error: error.message,
                details: error.details?.errors ?? null,
                payload: isCall ? params ?? null : result ?? null,
            });
            errorInfo.set(error, { ...(errorInfo.get(error) ?? {}), violation: v });
        });

        client.on('badMessage', ({ buffer, error }) => {
            const frame = parseFrame(buffer.toString('utf8'));
            const id = frame && typeof frame[1] === 'string' ? frame[1] : null;
            const isAnswer = frame && (frame[0] === MSG_CALLRESULT || frame[0] === MSG_CALLERROR);
            if (isAnswer && (this.rawIds.has(id) || this.timedOut.has(id))) return;
            recordViolation({
                identity: this.identity, direction: 'from_cp', kind: 'frame', action: null,
                messageId: id, errorCode: error.rpcErrorCode ?? null, error: error.message,
                details: null, payload: buffer.toString('utf8'),
            });
        });

        client.on('callError', ({ outbound, messageId, method, params, error }) => {
            if (outbound) {
                errorInfo.set(error, { ...(errorInfo.get(error) ?? {}), messageId });
                if (error instanceof TimeoutError) this.timedOut.add(messageId);
            } else if (error.rpcErrorCode === 'NotImplemented' && !CP_ACTIONS.includes(method)) {
                recordViolation({
                    identity: this.identity, direction: 'from_cp', kind: 'action', action: method,
                    messageId, errorCode: 'NotImplemented',
                    error: `'${method}' is not an action a charge point initiates in OCPP 1.6`,
                    details: null, payload: params ?? null,
                });
            }
        });

        for (const action of CP_ACTIONS) {
            client.handle(action, ({ params }) => this.answer(action, params));
        }
    }

    onFrame(text, outbound) {
        const frame = parseFrame(text);
        const type = frame && typeof frame[0] === 'number' ? frame[0] : null;
        const id = frame && typeof frame[1] === 'string' ? frame[1] : null;
        const entry = {
            identity: this.identity, dir: outbound ? 'to_cp' : 'from_cp', frame: text,
            type, id, action: null, payload: null,
            errorCode: null, errorDescription: null, errorDetails: null,
        };
        const sent = outbound ? this.outCalls : this.inCalls;  // calls this side made...
        const received = outbound ? this.inCalls : this.outCalls;  // ...and the other side
        // an answer a call of ocpp-rpc's own waits for (not one of our raw frames)
        const answersRealCall = id !== null && received.has(id) && !this.rawIds.has(id);
        if (type === MSG_CALL) {
            entry.action = typeof frame[2] === 'string' ? frame[2] : null;
            entry.payload = frame[3] ?? null;
            if (id !== null) sent.set(id, entry.action);
        } else if (type === MSG_CALLRESULT || type === MSG_CALLERROR) {
            entry.action = received.get(id) ?? null;
            if (type === MSG_CALLRESULT) {
                entry.payload = frame[2] ?? null;
            } else {
                [entry.errorCode, entry.errorDescription, entry.errorDetails] =
                    [frame[2] ?? null, frame[3] ?? null, frame[4] ?? null];
            }
            // a late answer may still come after a timeout: keep the id's action until then
            if (!this.timedOut.has(id)) received.delete(id);
        }
        logEntry(entry);
        if (outbound || (type !== MSG_CALLRESULT && type !== MSG_CALLERROR)) return;

        if (type === MSG_CALLERROR) {
            this.callErrors.set(id, entry);
            if (!CALLERROR_CODES.has(entry.errorCode)) {
                recordViolation({
                    identity: this.identity, direction: 'from_cp', kind: 'callerror',
                    action: entry.action, messageId: id, errorCode: entry.errorCode,
                    error: `'${entry.errorCode}' is not an OCPP-J 1.6 error code`,
                    details: null, payload: text,
                });
            }
        }
        // answers to raw frames: by message id, else the first answer no real call waits for
        let i = this.rawWaiters.findIndex(w => w.id !== null && w.id === id);
        if (i < 0 && !answersRealCall) {
            i = this.rawWaiters.findIndex(w => w.id === null);
        }
        if (i >= 0) {
            const [w] = this.rawWaiters.splice(i, 1);
            if (id !== null) this.rawIds.add(id);
            w.resolve(text);
        }
    }

    async answer(action, params) {
        const behaviour = config.actions[action];
        if (behaviour) {
            if (behaviour.delayMs) await sleep(behaviour.delayMs);
            if (behaviour.reject) {
                const r = behaviour.reject;
                if (r.times == null || r.times > 0) {
                    if (r.times != null) {
                        r.times -= 1;
                        saveConfig();
                    }
                    throw createRPCError(r.code || 'InternalError', r.description ?? '', r.details ?? {});
                }
            }
            if (behaviour.noReply) return NOREPLY;
        }
        switch (action) {
            case 'BootNotification':
                return { status: config.bootStatus, currentTime: now(), interval: config.heartbeatInterval };
            case 'Heartbeat':
                return { currentTime: now() };
            case 'Authorize':
                return { idTagInfo: idTagInfo(params.idTag) };
            case 'StartTransaction': {
                const transactionId = config.nextTransactionId;
                config.nextTransactionId += 1;
                saveConfig();
                return { transactionId, idTagInfo: idTagInfo(params.idTag) };
            }
            case 'StopTransaction':
                return params.idTag !== undefined ? { idTagInfo: idTagInfo(params.idTag) } : {};
            case 'DataTransfer': {
                const entry = config.dataTransfer[params.vendorId];
                if (!entry) return { status: 'UnknownVendorId' };
                const out = { status: entry.status ?? 'Accepted' };
                if (entry.data !== undefined && entry.data !== null) out.data = entry.data;
                return out;
            }
            case 'SignCertificate':
                return { status: 'Accepted' };
            default:  // MeterValues, StatusNotification, *StatusNotification, SecurityEventNotification
                return {};
        }
    }

    async call(action, payload, timeoutMs) {
        try {
            const result = await this.client.call(action, payload, { callTimeoutMs: timeoutMs });
            return { ok: true, result };
        } catch (err) {
            const info = errorInfo.get(err) ?? {};
            if (info.violation) {
                const stage = info.violation.direction === 'to_cp' ? 'request_invalid' : 'response_invalid';
                return { ok: false, stage, violation: info.violation };
            }
            if (err instanceof TimeoutError) return { ok: false, stage: 'timeout' };
            const frame = info.messageId !== undefined ? this.callErrors.get(info.messageId) : undefined;
            if (frame) {
                this.callErrors.delete(info.messageId);
                return {
                    ok: false, stage: 'callerror',
                    error: { code: frame.errorCode, description: frame.errorDescription, details: frame.errorDetails },
                };
            }
            return { ok: false, stage: 'disconnected', message: err.message };
        }
    }

    sendRaw(text, messageId, timeoutMs) {
        let id = messageId;
        if (id === undefined) {
            const frame = parseFrame(text);
            id = frame && typeof frame[1] === 'string' ? frame[1] : null;
        }
        if (id !== null) this.rawIds.add(id);
        return new Promise(resolve => {
            const waiter = { id, resolve: answer => { clearTimeout(timer); resolve(answer); } };
            const timer = setTimeout(() => {
                this.rawWaiters = this.rawWaiters.filter(w => w !== waiter);
                resolve(null);
            }, timeoutMs);
            this.rawWaiters.push(waiter);
            try {
                this.client.sendRaw(text);
            } catch (err) {
                waiter.resolve(null);
            }
        });
    }

    closed() {
        for (const w of this.rawWaiters) w.resolve(null);
        this.rawWaiters = [];
    }
}

function idTagInfo(idTag) {
    const e = config.idTags[idTag];
    if (!e) return { status: 'Invalid' };
    const info = { status: e.status ?? 'Accepted' };
    if (e.parentIdTag != null) info.parentIdTag = e.parentIdTag;
    if (e.expiryDate != null) info.expiryDate = e.expiryDate;
    return info;
}

// ---------------------------------------------------------------------------------------------
// the control API (plain HTTP, JSON, 127.0.0.1)

class HttpError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}

function connection(identity) {
    const conn = connections.get(identity);
    if (!conn) throw new HttpError(404, `charge point '${identity}' is not connected`);
    return conn;
}

function timeoutMsOf(body, fallback) {
    const t = body.timeoutMs ?? fallback;
    if (typeof t !== 'number' || !(t > 0)) throw new HttpError(400, 'timeoutMs must be a positive number');
    return t;
}

const routes = {
    'GET /health': async () => ({ ok: true }),
    'GET /clients': async () => ({ identities: [...connections.keys()] }),
    'GET /messages': async (_, q) => {
        const since = Number(q.get('since') ?? 0);
        return { messages: messages.slice(since), next: messages.length };
    },
    'GET /violations': async (_, q) => {
        const since = Number(q.get('since') ?? 0);
        return { violations: violations.slice(since), next: violations.length };
    },
    'GET /config': async () => config,
    'POST /config': async body => {
        try {
            config = mergeConfig(config, body);
        } catch (err) {
            throw new HttpError(400, err.message);
        }
        saveConfig();
        return config;
    },
    'POST /call': async body => {
        if (typeof body.action !== 'string') throw new HttpError(400, 'action must be a string');
        return connection(body.identity).call(body.action, body.payload ?? {}, timeoutMsOf(body, 10000));
    },
    'POST /raw': async body => {
        if (typeof body.text !== 'string') throw new HttpError(400, 'text must be a string');
        const answer = await connection(body.identity).sendRaw(body.text, body.messageId, timeoutMsOf(body, 5000));
        return { ok: true, answer };
    },
    'POST /disconnect': async body => {
        const conn = connection(body.identity);
        // not awaited: a graceful close waits for the charge point's close frame
        conn.client.close(body.force ? { force: true } : { code: body.code ?? 1000, reason: body.reason ?? '' })
            .catch(() => {});
        return { ok: true };
    },
};

const control = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const route = routes[`${req.method} ${url.pathname}`];
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', chunk => { raw += chunk; });
    req.on('end', async () => {
        let status = 200;
        let out;
        try {
            if (!route) throw new HttpError(404, `no route ${req.method} ${url.pathname}`);
            let body = {};
            if (raw) {
                try { body = JSON.parse(raw); } catch { throw new HttpError(400, 'body is not JSON'); }
            }
            out = await route(body, url.searchParams);
        } catch (err) {
            status = err.status ?? 500;
            out = { error: err.message };
            if (status === 500) process.stderr.write(`control API: ${err.stack}\n`);
        }
        res.writeHead(status, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify(out));
    });
});

// ---------------------------------------------------------------------------------------------
// start, stop

function listen(server, port) {
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve(server.address().port));
    });
}

let wsServer;
async function main() {
    if (args.cert) {
        wsServer = https.createServer({
            cert: fs.readFileSync(args.cert),
            key: fs.readFileSync(args.key),
            minVersion: 'TLSv1.2',
        });
    } else {
        wsServer = http.createServer();
    }
    wsServer.on('request', (req, res) => {
        res.writeHead(404);
        res.end();
    });
    wsServer.on('upgrade', rpc.handleUpgrade);
    const wsPort = await listen(wsServer, Number(args.port));
    const httpPort = await listen(control, Number(args['http-port']));
    process.stdout.write(`READY ws=${wsPort} http=${httpPort}\n`);
}

let stopping = false;
async function shutdown(code) {
    if (stopping) return;
    stopping = true;
    wsServer?.close();
    control.close();
    // 1001 Going Away to every charge point, as a backend going down for maintenance would
    const closing = [...connections.values()].map(c =>
        c.client.close({ code: 1001, reason: 'central system stopping' }).catch(() => {}));
    await Promise.race([Promise.all(closing), sleep(1000)]);
    process.exit(code);
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
process.stdin.on('end', () => shutdown(0));
process.stdin.on('error', () => shutdown(0));
process.stdin.resume();

main().catch(err => {
    process.stderr.write(`csms failed to start: ${err.stack}\n`);
    process.exit(1);
});
