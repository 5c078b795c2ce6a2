// A minimal Language Server Protocol client over stdio, enough to drive the real
// yaml-language-server the way an editor does: open documents, collect the diagnostics it
// publishes, ask for completions.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';

const require = createRequire(import.meta.url);

/** Path of the installed server's entry point. */
function serverBin() {
  const pkg = require.resolve('yaml-language-server/package.json');
  return join(dirname(pkg), 'bin', 'yaml-language-server');
}

/** Editor settings: validation, hover and completion on; no schema store (no network here). */
const YAML_SETTINGS = {
  validate: true,
  hover: true,
  completion: true,
  schemas: {},
  schemaStore: { enable: false },
  kubernetesCRDStore: { enable: false },
};

export class Client {
  constructor(rootDir) {
    this.rootDir = rootDir;
    this.proc = spawn(process.execPath, [serverBin(), '--stdio'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.nextId = 1;
    this.pending = new Map();
    this.diagnostics = new Map(); // uri → { version, items, at }
    this.waiters = [];
    this.buffer = Buffer.alloc(0);
    this.stderr = '';
    this.proc.stderr.on('data', (d) => {
      this.stderr += d.toString();
    });
    this.proc.stdout.on('data', (d) => this.onData(d));
  }

  onData(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const headerEnd = this.buffer.indexOf('\r\n\r\n');
      if (headerEnd < 0) return;
      const header = this.buffer.subarray(0, headerEnd).toString();
      const m = /Content-Length: (\d+)/i.exec(header);
      if (!m) throw new Error(`bad LSP header: ${header}`);
      const len = Number(m[1]);
      const start = headerEnd + 4;
      if (this.buffer.length < start + len) return;
      const body = JSON.parse(this.buffer.subarray(start, start + len).toString());
      this.buffer = this.buffer.subarray(start + len);
      this.onMessage(body);
    }
  }

  onMessage(msg) {
    if (msg.id !== undefined && msg.method === undefined) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      if (!p) return;
      if (msg.error) p.reject(new Error(`${msg.error.code}: ${msg.error.message}`));
      else p.resolve(msg.result);
      return;
    }
    if (msg.method === 'workspace/configuration') {
      const result = msg.params.items.map((i) => (i.section === 'yaml' ? YAML_SETTINGS : {}));
      this.send({ jsonrpc: '2.0', id: msg.id, result });
      return;
    }
    if (msg.id !== undefined) {
      // Any other request from the server (registerCapability, workDoneProgress/create, …).
      this.send({ jsonrpc: '2.0', id: msg.id, result: null });
      return;
    }
    if (msg.method === 'textDocument/publishDiagnostics') {
      this.diagnostics.set(msg.params.uri, { items: msg.params.diagnostics, at: Date.now() });
      for (const w of this.waiters) w();
    }
  }

  send(msg) {
    const body = Buffer.from(JSON.stringify(msg));
    this.proc.stdin.write(`Content-Length: ${body.length}\r\n\r\n`);
    this.proc.stdin.write(body);
  }

  request(method, params) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.send({ jsonrpc: '2.0', id, method, params });
    });
  }

  notify(method, params) {
    this.send({ jsonrpc: '2.0', method, params });
  }

  async start() {
    await this.request('initialize', {
      processId: process.pid,
      rootUri: pathToFileURL(this.rootDir).href,
      capabilities: {
        workspace: { configuration: true, didChangeConfiguration: { dynamicRegistration: false } },
        textDocument: {
          publishDiagnostics: {},
          completion: {
            completionItem: {
              snippetSupport: true,
              documentationFormat: ['markdown', 'plaintext'],
            },
          },
          hover: { contentFormat: ['markdown', 'plaintext'] },
        },
      },
    });
    this.notify('initialized', {});
    this.notify('workspace/didChangeConfiguration', { settings: { yaml: YAML_SETTINGS } });
  }

  /** Open `path` (its text, or `text` instead) and return its uri. */
  open(path, text) {
    const uri = pathToFileURL(path).href;
    this.diagnostics.delete(uri);
    this.notify('textDocument/didOpen', {
      textDocument: { uri, languageId: 'yaml', version: 1, text: text ?? readFileSync(path, 'utf8') },
    });
    return uri;
  }

  close(uri) {
    this.notify('textDocument/didClose', { textDocument: { uri } });
  }

  /**
   * The diagnostics the server publishes for `uri` once it has settled: the latest set after
   * `quietMs` without a new one.
   */
  async diagnosticsFor(uri, { timeoutMs = 20000, quietMs = 400 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const d = this.diagnostics.get(uri);
      const now = Date.now();
      if (d && now - d.at >= quietMs) return d.items;
      if (now > deadline) {
        throw new Error(`no diagnostics for ${uri} within ${timeoutMs} ms\n${this.stderr}`);
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, 50);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
      this.waiters = [];
    }
  }

  /** Completion items at a zero-based `line`/`character`. */
  async complete(uri, line, character) {
    const r = await this.request('textDocument/completion', {
      textDocument: { uri },
      position: { line, character },
    });
    return Array.isArray(r) ? r : (r?.items ?? []);
  }

  async stop() {
    try {
      await Promise.race([
        this.request('shutdown', null),
        new Promise((resolve) => setTimeout(resolve, 2000)),
      ]);
      this.notify('exit', null);
    } finally {
      setTimeout(() => this.proc.kill(), 500).unref();
    }
  }
}
