// AudioWorklet: hands every block of microphone samples (mono, context rate) to the page.
class Capture extends AudioWorkletProcessor {
  process(inputs) {
    const input = inputs[0];
    if (input && input[0] && input[0].length) {
      this.port.postMessage(input[0].slice(0));
    }
    return true;
  }
}
registerProcessor("lm-capture", Capture);
