/** Socket backpressure: wait until a socket whose write() returned false drains, or closes. */
import type { Socket } from 'node:net';

/** Resolves on 'drain' or 'close' (a closed socket must not leave its writer waiting for ever). */
export function drainedOrClosed(socket: Socket): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      socket.off('drain', done);
      socket.off('close', done);
      resolve();
    };
    socket.on('drain', done);
    socket.on('close', done);
  });
}
