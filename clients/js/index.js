// The SDK's source is src/linguamesh/web/sdk (one home: every scheduler serves the same
// files at /static/sdk/); `sdk` links to it in the repository and is copied when packed.
export * from "./sdk/index.js";
