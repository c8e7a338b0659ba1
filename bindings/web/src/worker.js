// One worker of a Tandem's thread pool (pool.rs): its own instance of the package, on the
// CPU backend, with its own copy of the text model. It is started from a blob URL, so it
// imports the package's JS glue by the URL the calling instance sends ("init"), and
// instantiates the WebAssembly.Module that instance already compiled (no second download or
// compile). Every request gets one answer with its id: { id, result } or { id, error, fatal };
// fatal (a wasm trap: the instance is unusable after one) tells the pool to end this worker.
let tandem;

self.onmessage = async ({ data: { id, op, ...args } }) => {
  try {
    let result;
    let transfer = [];
    switch (op) {
      case "init": {
        const glue = await import(args.glue);
        await glue.default({ module_or_path: args.module });
        tandem = await glue.Tandem.create({ backend: "cpu" });
        break;
      }
      case "loadTextModel":
        await tandem.loadTextModel(args.source);
        break;
      case "embed":
        result = await tandem.embed(args.texts);
        transfer = result.map((v) => v.buffer);
        break;
      case "fault": // for the tests of the pool's error paths only
        if (args.kind === "uncaught") {
          setTimeout(() => { throw new Error("an uncaught error asked for by a test"); });
          return; // no answer: the worker's error event has to reject the call
        }
        if (args.kind === "trap") throw new WebAssembly.RuntimeError("unreachable (a trap asked for by a test)");
        throw new Error("an error asked for by a test");
      default:
        throw new Error(`unknown request '${op}'`);
    }
    postMessage({ id, result }, transfer);
  } catch (e) {
    const error = { name: e?.name, code: e?.code, message: String(e?.message ?? e) };
    postMessage({ id, error, fatal: e instanceof WebAssembly.RuntimeError });
  }
};
