'use strict';
/**
 * kubelambda's Node.js runtime: a Lambda Runtime API client loop (no dependencies).
 *
 * Behaves like AWS's Node.js 18 runtime: `_HANDLER` is `[dir/]module.function[.nested]`;
 * the module may be CommonJS (.js/.cjs) or ES (.mjs, or .js in a "type": "module"
 * package); handlers may be async or callback-style (callbackWaitsForEmptyEventLoop
 * honoured via 'beforeExit'); context has the camelCase fields plus done/succeed/fail;
 * errors are reported as {errorType, errorMessage, trace}; console output is written
 * synchronously as "<time>\t<request id>\t<LEVEL>\t<message>" lines.
 * Uses only APIs present in both Node 18 and Node 20.
 */

const fs = require('fs');
const http = require('http');
const path = require('path');
const util = require('util');
const { pathToFileURL } = require('url');

const API_BASE = '/2018-06-01/runtime';
const ERROR_TYPE_HEADER = 'Lambda-Runtime-Function-Error-Type';
const address = process.env.AWS_LAMBDA_RUNTIME_API || '127.0.0.1:9001';
const HOST = address.slice(0, address.lastIndexOf(':'));
const PORT = Number(address.slice(address.lastIndexOf(':') + 1));
// Free keep-alive sockets are unref'd by the agent, so they never hold the event loop
// open (callbackWaitsForEmptyEventLoop relies on the loop draining).
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

let currentRequestId = '';
let runningRequestId = null; // while an invocation has not been completed

class RuntimeFault extends Error {
  constructor(errorType, message) {
    super(message);
    this.name = errorType;
  }
}

// --- logging ------------------------------------------------------------------------------

function writeSync(fd, text) {
  const buffer = Buffer.from(text);
  let offset = 0;
  while (offset < buffer.length) {
    try {
      offset += fs.writeSync(fd, buffer, offset);
    } catch (err) {
      if (err.code !== 'EAGAIN') throw err;
    }
  }
}

function patchConsole() {
  const levels = {
    log: 'INFO', info: 'INFO', warn: 'WARN', error: 'ERROR', debug: 'DEBUG', trace: 'TRACE', fatal: 'FATAL',
  };
  for (const [method, level] of Object.entries(levels)) {
    console[method] = (...args) => {
      // One log event per call: newlines become CR, as in Lambda's stdout format.
      const message = util.format(...args).replace(/\n/g, '\r');
      writeSync(1, `${new Date().toISOString()}\t${currentRequestId}\t${level}\t${message}\n`);
    };
  }
}

// --- errors -------------------------------------------------------------------------------

function toRapidResponse(error) {
  try {
    if (error instanceof Error || util.types.isNativeError(error)) {
      return {
        errorType: error.name,
        errorMessage: error.message,
        trace: String(error.stack || '').split('\n'),
      };
    }
    return { errorType: typeof error, errorMessage: String(error), trace: [] };
  } catch (_err) {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
    };
  }
}

function toFormatted(error) {
  const { errorType, errorMessage, trace } = toRapidResponse(error);
  return `\t${JSON.stringify({ errorType, errorMessage, stack: trace })}`;
}

// --- Runtime API client -------------------------------------------------------------------

function call(method, route, body, headers) {
  return new Promise((resolve, reject) => {
    const options = { host: HOST, port: PORT, path: API_BASE + route, method, agent, headers: headers || {} };
    if (body !== undefined) options.headers['Content-Length'] = body.length;
    const req = http.request(options, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function nextInvocation() {
  const res = await call('GET', '/invocation/next');
  if (res.status !== 200) throw new Error(`/invocation/next returned ${res.status}: ${res.body}`);
  return res;
}

function postJson(route, document, errorType) {
  const headers = { 'Content-Type': 'application/json' };
  if (errorType) headers[ERROR_TYPE_HEADER] = errorType;
  return call('POST', route, Buffer.from(document), headers);
}

function postError(requestId, error) {
  const response = toRapidResponse(error);
  return postJson(`/invocation/${requestId}/error`, JSON.stringify(response), response.errorType);
}

async function postResult(requestId, result) {
  let document;
  try {
    document = JSON.stringify(result === undefined ? null : result);
  } catch (err) {
    const fault = new RuntimeFault('Runtime.MarshalError', `Unable to stringify response body as json: ${err.message}`);
    console.error('Invoke Error', toFormatted(fault));
    return postError(requestId, fault);
  }
  const res = await postJson(`/invocation/${requestId}/response`, document === undefined ? 'null' : document);
  if (res.status === 413) console.error(`Response too large for request ${requestId}: ${res.body}`);
  return res;
}

function postInitError(error) {
  const response = toRapidResponse(error);
  return postJson('/init/error', JSON.stringify(response), response.errorType);
}

// --- handler loading ----------------------------------------------------------------------

function isFile(file) {
  try {
    return fs.statSync(file).isFile();
  } catch (_err) {
    return false;
  }
}

function hasTypeModule(dir) {
  for (let current = dir; ; current = path.dirname(current)) {
    const manifest = path.join(current, 'package.json');
    if (isFile(manifest)) {
      try {
        return JSON.parse(fs.readFileSync(manifest, 'utf8')).type === 'module';
      } catch (_err) {
        return false;
      }
    }
    if (path.dirname(current) === current) return false;
  }
}

async function requireOrImport(file) {
  if (file.endsWith('.mjs') || (file.endsWith('.js') && hasTypeModule(path.dirname(file)))) {
    return import(pathToFileURL(file).href);
  }
  try {
    return require(file);
  } catch (err) {
    if (err.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
    throw err;
  }
}

async function loadModule(taskRoot, moduleRoot, name) {
  const base = path.resolve(taskRoot, moduleRoot, name);
  try {
    for (const ext of ['', '.js', '.mjs', '.cjs']) {
      if (isFile(base + ext)) return await requireOrImport(base + ext);
    }
    // A package in node_modules, or a directory with an index file.
    const resolved = require.resolve(name, { paths: [path.resolve(taskRoot, moduleRoot), taskRoot] });
    return await requireOrImport(resolved);
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw new RuntimeFault('Runtime.UserCodeSyntaxError', `${err.name}: ${err.message}`);
    }
    if (err.code === 'MODULE_NOT_FOUND' || err.code === 'ERR_MODULE_NOT_FOUND') {
      throw new RuntimeFault('Runtime.ImportModuleError', `Error: ${err.message}`);
    }
    throw err;
  }
}

async function loadHandler(taskRoot, fullHandler) {
  const handlerString = path.basename(fullHandler);
  const moduleRoot = fullHandler.slice(0, fullHandler.length - handlerString.length);
  const match = handlerString.match(/^([^.]*)\.(.*)$/);
  if (!match) throw new RuntimeFault('Runtime.MalformedHandlerName', 'Bad handler');
  const [, moduleName, handlerPath] = match;
  const loaded = await loadModule(taskRoot, moduleRoot, moduleName);
  const handler = handlerPath.split('.').reduce((obj, key) => (obj == null ? undefined : obj[key]), loaded);
  if (handler === undefined || handler === null) {
    throw new RuntimeFault('Runtime.HandlerNotFound', `${fullHandler} is undefined or not exported`);
  }
  if (typeof handler !== 'function') {
    throw new RuntimeFault('Runtime.HandlerNotFound', `${fullHandler} is not a function`);
  }
  return handler;
}

// --- invocations --------------------------------------------------------------------------

let beforeExitListener = null;
process.on('beforeExit', () => {
  const listener = beforeExitListener;
  beforeExitListener = null;
  if (listener) listener();
});

function parseJsonHeader(value) {
  return value ? JSON.parse(value) : undefined;
}

function makeContext(headers, complete) {
  const env = process.env;
  const deadline = Number(headers['lambda-runtime-deadline-ms']);
  let waitForEmptyEventLoop = true;
  const done = (err, result) => {
    beforeExitListener = null;
    complete(err, result);
  };
  return {
    get callbackWaitsForEmptyEventLoop() {
      return waitForEmptyEventLoop;
    },
    set callbackWaitsForEmptyEventLoop(value) {
      waitForEmptyEventLoop = value;
    },
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    invokedFunctionArn: headers['lambda-runtime-invoked-function-arn'],
    awsRequestId: headers['lambda-runtime-aws-request-id'],
    clientContext: parseJsonHeader(headers['lambda-runtime-client-context']),
    identity: parseJsonHeader(headers['lambda-runtime-cognito-identity']),
    getRemainingTimeInMillis: () => Math.max(deadline - Date.now(), 0),
    done,
    succeed: (result) => done(null, result),
    fail: (err) => done(err === undefined || err === null ? 'handled' : err),
  };
}

function runInvocation(handler, headers, body) {
  return new Promise((resolve) => {
    const requestId = headers['lambda-runtime-aws-request-id'];
    currentRequestId = requestId;
    const trace = headers['lambda-runtime-trace-id'];
    if (trace) process.env._X_AMZN_TRACE_ID = trace;
    else delete process.env._X_AMZN_TRACE_ID;

    let finished = false;
    const complete = (err, result) => {
      if (finished) {
        console.error('Invocation has already been reported as done. Cannot call complete more than once per invocation.');
        return;
      }
      finished = true;
      runningRequestId = null;
      let posting;
      if (err !== undefined && err !== null) {
        console.error('Invoke Error', toFormatted(err));
        posting = postError(requestId, err);
      } else {
        posting = postResult(requestId, result);
      }
      posting.then(resolve, (postErr) => {
        console.error('Failed to post the invocation result', toFormatted(postErr));
        resolve();
      });
    };
    runningRequestId = requestId;
    const context = makeContext(headers, complete);
    const callback = (err, result) => {
      beforeExitListener = null;
      if (err !== undefined && err !== null) complete(err);
      else if (!context.callbackWaitsForEmptyEventLoop) complete(null, result);
      else beforeExitListener = () => setImmediate(() => complete(null, result));
    };
    try {
      const event = JSON.parse(body.toString('utf8'));
      const returned = handler(event, context, callback);
      if (returned && typeof returned.then === 'function') {
        returned.then(context.succeed, (err) => context.fail(err));
      }
    } catch (err) {
      callback(err);
    }
  });
}

// --- process-level failures ---------------------------------------------------------------

function failAndExit(label, error, exitCode) {
  console.error(label, toFormatted(error));
  const posting = runningRequestId ? postError(runningRequestId, error) : postInitError(error);
  posting.catch(() => undefined).then(() => process.exit(exitCode));
}

process.on('uncaughtException', (error) => failAndExit('Uncaught Exception', error, 129));
process.on('unhandledRejection', (reason) => {
  const message = reason && reason.name ? `${reason.name}: ${reason.message}` : String(reason);
  const error = new RuntimeFault('Runtime.UnhandledPromiseRejection', message);
  failAndExit('Unhandled Promise Rejection', error, 128);
});

// --- main ---------------------------------------------------------------------------------

async function main() {
  patchConsole();
  let handler;
  try {
    handler = await loadHandler(process.env.LAMBDA_TASK_ROOT || '/var/task', process.env._HANDLER || '');
  } catch (err) {
    console.error('Init Error', toFormatted(err));
    await postInitError(err).catch(() => undefined);
    process.exit(1);
  }
  for (;;) {
    const { headers, body } = await nextInvocation();
    await runInvocation(handler, headers, body);
  }
}

main().catch((err) => {
  console.error('Runtime Error', toFormatted(err));
  process.exit(1);
});
