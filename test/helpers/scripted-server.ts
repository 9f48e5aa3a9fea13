/**
 * A scripted stand-in for `vnstore serve` on loopback, for agent tests: it answers HELLO and BEGIN
 * (no parent) itself and hands every other message to `onMessage`, with a function that answers.
 */
import net from 'node:net';
import { decodeMessage, encodeMessage, FrameDecoder, MAX_REPLY_FRAME_BYTES, type Message } from '../../src/protocol/index.js';

export type Answer = (m: Message) => void;

/**
 * Listens on 127.0.0.1; returns its address and the server (close it after the test). `welcome`:
 * the limits it announces (by default those of the first servers: 256 pages, 1 MiB frames).
 */
export async function scriptedServer(
  onMessage: (m: Message, answer: Answer) => void,
  welcome: { maxFrameBytes: number; maxPagesPerBatch: number } = { maxFrameBytes: MAX_REPLY_FRAME_BYTES, maxPagesPerBatch: 256 },
): Promise<{ address: string; server: net.Server }> {
  const server = net.createServer((sock) => {
    const d = new FrameDecoder();
    const answer: Answer = (m) => sock.write(encodeMessage(m));
    sock.on('data', (chunk: Buffer) => {
      for (const f of d.push(chunk)) {
        const m = decodeMessage(f);
        if (m.t === 'hello') answer({ t: 'welcome', version: 1, window: 8, ...welcome, serverId: 'scripted' });
        else if (m.t === 'begin') answer({ t: 'result', req: m.req, json: '{"parent":null}' });
        else onMessage(m, answer);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return { address: `127.0.0.1:${port}`, server };
}
