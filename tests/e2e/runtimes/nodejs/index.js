'use strict';
// A function written for AWS Lambda's Node.js 18 runtime. event.style picks the handler style:
// "async" returns a promise, "callback" answers through the callback from a timer; "layer"
// uses a module from a layer; "paths" reports the file paths Node sees.

function describe(style, event, context) {
  return {
    style,
    echo: event.value,
    functionName: context.functionName,
    functionVersion: context.functionVersion,
    memoryLimitInMB: context.memoryLimitInMB,
    awsRequestId: context.awsRequestId,
    invokedFunctionArn: context.invokedFunctionArn,
    logGroupName: context.logGroupName,
    remainingMs: context.getRemainingTimeInMillis(),
    node: process.version,
  };
}

async function asyncHandler(event, context) {
  await new Promise((resolve) => setTimeout(resolve, 20));
  return describe('async', event, context);
}

function callbackHandler(event, context, callback) {
  setTimeout(() => callback(null, describe('callback', event, context)), 20);
}

exports.handler = (event, context, callback) => {
  if (event.style === 'layer') {
    // From a layer's nodejs/node_modules, found through NODE_PATH as on Lambda.
    const shout = require('shout');
    return Promise.resolve({ shouted: shout(event.value), from: require.resolve('shout') });
  }
  if (event.style === 'paths') {
    // What error trackers and __dirname-relative code see.
    return Promise.resolve({
      filename: __filename,
      stackFrame: new Error('where am I').stack.split('\n')[1].trim(),
      layerModule: require.resolve('shout'),
    });
  }
  if (event.style === 'callback') {
    callbackHandler(event, context, callback);
    return undefined;
  }
  return asyncHandler(event, context);
};
