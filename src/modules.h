/* The registration of kumod's modules, in start-up order: one list that
 * the daemon (main.c) and the in-process kumod of the fuzz targets
 * (tests/fuzz/support/inproc.c) share, so that a fuzzed kumod has every
 * endpoint, event and Lua module the real one has. */
#ifndef KUMOD_MODULES_H
#define KUMOD_MODULES_H

/* Registers every Lua module, HTTP endpoint module and delivery protocol,
 * initialises the queue engine and wires the hooks between layers (the
 * SMTP server's reception into the queues, log-hook records into their
 * queue). Main thread, before the reactors start; once per process. */
void kumod_register_modules(void);

#endif
