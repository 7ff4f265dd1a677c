// Command echo is the end-to-end tests' TCP and UDP echo server and client.
//
//	echo -listen tcp/:80,udp/:53     serve until killed; prints "ready" once listening
//	echo -dial tcp/198.51.100.1:8080 send one line, print the reply, exit 0
//	echo -dial udp/… -from :40000    the same from a fixed local port
//	echo -probe tcp/10.0.0.2:80=40001,udp/10.0.0.3:80=40002
//	                                 dial every target at once, each from its
//	                                 local port, and print "<target> ok" or
//	                                 "<target> fail <why>" per target; exit 0
//
// The server answers each line (TCP) or datagram (UDP) with "<client
// address> <line>", so a test sees whether the client's source address
// reached the container or was masqueraded on the way. The client fails
// (exit 1) when no reply comes within -timeout.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	listen := flag.String("listen", "", "comma-separated proto/addr to serve (tcp/:80,udp/:53)")
	dial := flag.String("dial", "", "proto/addr to send one line to")
	timeout := flag.Duration("timeout", 2*time.Second, "client: how long to wait for the reply")
	from := flag.String("from", "", "client: local address to send from (e.g. :40000)")
	probe := flag.String("probe", "", "comma-separated proto/addr=localport to dial at once")
	flag.Parse()
	var err error
	switch {
	case *listen != "":
		err = serve(strings.Split(*listen, ","))
	case *dial != "":
		err = client(*dial, *from, *timeout)
	case *probe != "":
		probeAll(strings.Split(*probe, ","), *timeout)
	default:
		err = fmt.Errorf("-listen or -dial")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func split(spec string) (string, string, error) {
	proto, addr, ok := strings.Cut(spec, "/")
	if !ok {
		return "", "", fmt.Errorf("%q is not proto/addr", spec)
	}
	return proto, addr, nil
}

func serve(specs []string) error {
	for _, spec := range specs {
		proto, addr, err := split(spec)
		if err != nil {
			return err
		}
		switch proto {
		case "tcp":
			l, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			go serveTCP(l)
		case "udp":
			c, err := net.ListenPacket("udp", addr)
			if err != nil {
				return err
			}
			go serveUDP(c)
		default:
			return fmt.Errorf("protocol %q", proto)
		}
	}
	fmt.Println("ready")
	select {}
}

func serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			line, _ := bufio.NewReader(c).ReadString('\n')
			fmt.Fprintf(c, "%s %s\n", c.RemoteAddr(), strings.TrimSpace(line))
		}()
	}
}

func serveUDP(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteTo([]byte(fmt.Sprintf("%s %s\n", from, strings.TrimSpace(string(buf[:n])))), from)
	}
}

func client(spec, from string, timeout time.Duration) error {
	reply, err := exchange(spec, from, timeout)
	if err != nil {
		return err
	}
	fmt.Print(reply)
	return nil
}

// exchange sends one line to spec from the local address from (any when
// empty) and returns the reply line.
func exchange(spec, from string, timeout time.Duration) (string, error) {
	proto, addr, err := split(spec)
	if err != nil {
		return "", err
	}
	d := net.Dialer{Timeout: timeout}
	if from != "" {
		if d.LocalAddr, err = net.ResolveUDPAddr("udp", from); proto == "tcp" {
			d.LocalAddr, err = net.ResolveTCPAddr("tcp", from)
		}
		if err != nil {
			return "", err
		}
	}
	c, err := d.Dial(proto, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, "hello"); err != nil {
		return "", err
	}
	reply, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no reply from %s: %w", spec, err)
	}
	return reply, nil
}

// probeAll dials every target concurrently and prints one line per target
// in the order given. A fixed local port per target keeps a probe from
// landing on the conntrack entry of an earlier probe of the same pair.
func probeAll(targets []string, timeout time.Duration) {
	results := make([]string, len(targets))
	done := make(chan struct{})
	for i, t := range targets {
		go func() {
			defer func() { done <- struct{}{} }()
			spec, port, _ := strings.Cut(t, "=")
			from := ""
			if port != "" {
				from = ":" + port
			}
			if _, err := exchange(spec, from, timeout); err != nil {
				results[i] = fmt.Sprintf("%s fail %v", spec, err)
				return
			}
			results[i] = spec + " ok"
		}()
	}
	for range targets {
		<-done
	}
	for _, r := range results {
		fmt.Println(r)
	}
}
