/* kumo.crypto: aes_encrypt_block / aes_decrypt_block (AES-128/256, ECB or
 * CBC with PKCS#7 padding; CBC output starts with its random IV) and
 * aws_sign_v4 (AWS Signature Version 4), over OpenSSL 3. */
#ifndef KUMOD_LUA_LIB_CRYPTO_H
#define KUMOD_LUA_LIB_CRYPTO_H

void crypto_lua_register(void);

#endif
