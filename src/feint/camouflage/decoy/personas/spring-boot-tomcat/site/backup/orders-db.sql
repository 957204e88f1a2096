-- PostgreSQL database dump
--
-- Dumped from database version 15.6
SET statement_timeout = 0;
CREATE TABLE public.users (
    id bigint NOT NULL,
    username character varying(255) NOT NULL,
    password character varying(255) NOT NULL
);
COPY public.users (id, username, password) FROM stdin;
1	admin	{{token:password_hash}}
\.
