/* The DeferredSmtpInjection protocol of deferred_smtp_inject.kumomta.internal. */
#ifndef KUMOD_DELIVERY_DEFERRED_H
#define KUMOD_DELIVERY_DEFERRED_H

void deferred_register(void);

#endif
