/* The SMTP delivery protocol: MX resolution, connection plan, SMTP client. */
#ifndef KUMOD_DELIVERY_SMTP_DELIVER_H
#define KUMOD_DELIVERY_SMTP_DELIVER_H

void smtp_deliver_register(void);

#endif
