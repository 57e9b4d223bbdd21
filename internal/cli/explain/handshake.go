package explain

import (
	"crypto/tls"
	"net"
	"time"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// Handshake makes one mTLS connection on 127.0.0.1 between client's
// ClientTLSConfig and server's ServerTLSConfig, the SDK's own
// configurations, and reports whether both sides completed it (the server
// reads one byte, so that its refusal reaches the client in TLS 1.3 too).
// Tests use it to check that Evaluate agrees with the SDK.
func Handshake(client, server *agenttls.Source) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return false
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, server.ServerTLSConfig())
		if err := s.Handshake(); err != nil {
			serverErr <- err
			return
		}
		_, err = s.Read(make([]byte, 1))
		if err == nil {
			_, err = s.Write([]byte{1})
		}
		serverErr <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cl := tls.Client(c, client.ClientTLSConfig())
	clientErr := cl.Handshake()
	if clientErr == nil {
		if _, clientErr = cl.Write([]byte{1}); clientErr == nil {
			_, clientErr = cl.Read(make([]byte, 1))
		}
	}
	_ = c.Close()
	return clientErr == nil && <-serverErr == nil
}
