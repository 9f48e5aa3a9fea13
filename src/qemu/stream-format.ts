/**
 * Constants of QEMU's migration stream (QEMU 7.2, file version 3), as written by migration/savevm.c
 * and migration/ram.c. All integers in the stream are big-endian.
 */
export const QEMU_VM_FILE_MAGIC = 0x5145564d; // "QEVM"
export const QEMU_VM_FILE_VERSION = 3;
/** First word of a multifd channel (migration/multifd.c), which vnstore does not accept. */
export const MULTIFD_MAGIC = 0x11223344;

export const Section = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags: the low 12 bits of each record's be64 (the rest is the page's offset in its block). */
export const RamFlag = {
  FULL: 0x01,
  ZERO: 0x02,
  MEM_SIZE: 0x04,
  PAGE: 0x08,
  EOS: 0x10,
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
  MULTIFD_FLUSH: 0x200,
} as const;

/** Target page size of x86 (TARGET_PAGE_BITS 12); equal to vnstore's page. */
export const TARGET_PAGE_BITS = 12;
export const TARGET_PAGE_SIZE = 1 << TARGET_PAGE_BITS;
export const RAM_FLAG_MASK = TARGET_PAGE_SIZE - 1;

/** The RAM section's version that QEMU 7.2 writes (ram_mig_init registers "ram" with version 4). */
export const RAM_SECTION_VERSION = 4;
export const RAM_SECTION_NAME = 'ram';

/** Subsections of the configuration section (savevm.c vmstate_configuration). */
export const CONFIG_SUBSECTION = {
  pageBits: 'configuration/target-page-bits',
  capabilities: 'configuration/capabilities',
  uuid: 'configuration/uuid',
} as const;

/** Names of QEMU_VM_COMMAND values (savevm.c enum qemu_vm_cmd), for clear refusals. */
export const COMMAND_NAMES: Record<number, string> = {
  1: 'OPEN_RETURN_PATH (the return-path capability)',
  2: 'PING (the return-path capability)',
  3: 'POSTCOPY_ADVISE (postcopy)',
  4: 'POSTCOPY_LISTEN (postcopy)',
  5: 'POSTCOPY_RUN (postcopy)',
  6: 'POSTCOPY_RAM_DISCARD (postcopy)',
  7: 'PACKAGED (postcopy)',
  8: 'RECV_BITMAP (postcopy recovery)',
  9: 'POSTCOPY_RESUME (postcopy recovery)',
  10: 'ENABLE_COLO (COLO)',
};

/** A RAM block as the stream's setup announces it: its id string and used length in bytes. */
export interface RamBlock {
  name: string;
  bytes: number;
}

/** Identity of the RAM section (its START header), reused when the stream is written again. */
export interface RamSectionId {
  sectionId: number;
  instanceId: number;
  versionId: number;
}

/** What the configuration section says (absent when QEMU runs with send-configuration=off). */
export interface StreamConfig {
  machine: string;
  pageBits?: number;
  capabilities: string[];
  uuid?: string;
}
