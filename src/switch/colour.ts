/**
 * The colour rule (VNsnap, after Mattern): which frames may cross a VM's snapshot cut.
 *
 * A VM's colour is the epoch of the last cut it passed: it becomes `e` at the pause that ends its live
 * snapshot for epoch `e`. Every frame carries its sender's colour at the moment it was sent. The
 * receiving switch decides, knowing the receiver's colour:
 * - sender newer than receiver (post-snapshot to pre-snapshot): delivering it would record a receipt
 *   whose send is outside the snapshot, so it is dropped (`drop`, the paper) or held until the
 *   receiver flips (`hold`), or dropped when the hold buffer is full;
 * - sender older than receiver (pre-snapshot to post-snapshot): delivered; the send is in the
 *   snapshot, the receipt is not, so the frame is in flight across the cut. In `hold` mode it is
 *   recorded as channel state (re-delivered at group restore); in `drop` mode it is only counted
 *   (after a restore it looks like a frame lost on the wire);
 * - same colour: delivered.
 */
export type ChannelMode = 'drop' | 'hold';

export type Decision = 'deliver' | 'deliver-crossing' | 'hold' | 'drop';

export function forwardDecision(senderEpoch: number, receiverEpoch: number, mode: ChannelMode, holdRoom: boolean): Decision {
  if (senderEpoch > receiverEpoch) return mode === 'hold' && holdRoom ? 'hold' : 'drop';
  if (senderEpoch < receiverEpoch) return 'deliver-crossing';
  return 'deliver';
}
